package gateway

import (
	"encoding/json"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/zguard/zguard/config"
)

func TestNormalizePath(t *testing.T) {
	tests := map[string]struct {
		in, raw, route string
		err            bool
	}{
		"plain":                {in: "/view", raw: "/view", route: "/view"},
		"root":                 {in: "/", raw: "/", route: "/"},
		"api alias":            {in: "/api/view", raw: "/api/view", route: "/view"},
		"api root":             {in: "/api", raw: "/api", route: "/"},
		"double slash":         {in: "//view", raw: "/view", route: "/view"},
		"many slashes":         {in: "///api///view", raw: "/api/view", route: "/view"},
		"encoded letter":       {in: "/%76iew", raw: "/view", route: "/view"},
		"encoded dots":         {in: "/%2e%2e/view", raw: "/view", route: "/view"},
		"encoded dots api":     {in: "/api/%2E%2E/view", raw: "/view", route: "/view"},
		"dotdot out of api":    {in: "/api/../view", raw: "/view", route: "/view"},
		"dot segment":          {in: "/./view", raw: "/view", route: "/view"},
		"above root":           {in: "/../../view", raw: "/view", route: "/view"},
		"trailing slash kept":  {in: "/extensions/", raw: "/extensions/", route: "/extensions/"},
		"encoded slash kept":   {in: "/api/userdata/workflows%2fa.json", raw: "/api/userdata/workflows%2Fa.json", route: "/userdata/workflows/a.json"},
		"encoded slash escape": {in: "/api/x%2F..%2F..%2Fmanager/reboot", raw: "/api/x%2F..%2F..%2Fmanager/reboot", route: "/manager/reboot"},
		"space kept escaped":   {in: "/extensions/a%20b.js", raw: "/extensions/a%20b.js", route: "/extensions/a b.js"},
		"bad escape":           {in: "/vi%zzew", err: true},
		"truncated escape":     {in: "/view%2", err: true},
		"nul":                  {in: "/view%00", err: true},
		"relative":             {in: "view", err: true},
		"asterisk":             {in: "*", err: true},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			c, err := normalizePath(tc.in)
			if tc.err {
				if err == nil {
					t.Fatalf("normalizePath(%q) = %+v, want error", tc.in, c)
				}
				return
			}
			if err != nil {
				t.Fatalf("normalizePath(%q): %v", tc.in, err)
			}
			if c.Raw != tc.raw || c.Route != tc.route {
				t.Errorf("normalizePath(%q) = raw %q route %q, want raw %q route %q", tc.in, c.Raw, c.Route, tc.raw, tc.route)
			}
		})
	}
}

func FuzzNormalizePath(f *testing.F) {
	for _, s := range []string{"/", "//view", "/%76iew", "/api/../view", "/%2e%2e/%2e%2e/etc", "/api/userdata/a%2F..%2Fb", "/a/./b/../c/", "/%", "/%00"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, in string) {
		c, err := normalizePath(in)
		if err != nil {
			return
		}
		for _, p := range []string{c.Raw, c.Route} {
			if !strings.HasPrefix(p, "/") || strings.Contains(p, "//") {
				t.Fatalf("normalizePath(%q) left an empty segment: %+v", in, c)
			}
			for _, seg := range strings.Split(p, "/") {
				if seg == "." || seg == ".." {
					t.Fatalf("normalizePath(%q) left a dot segment: %+v", in, c)
				}
			}
		}
		if strings.HasPrefix(c.Route, "/api/") {
			// Only a path like /api/api/x keeps an /api prefix after one strip.
			if !strings.HasPrefix(c.Decoded, "/api/api") {
				t.Fatalf("normalizePath(%q): route %q still under /api", in, c.Route)
			}
		}
		again, err := normalizePath(c.Raw)
		if err != nil || again != c {
			t.Fatalf("normalizePath is not idempotent on %q: %+v then %+v (%v)", in, c, again, err)
		}
	})
}

func TestBlocked(t *testing.T) {
	patterns := []string{"/manager/*", "/api/customnode/*", "/userdata/*ComfyUI-Manager*"}
	tests := map[string]blockCase{
		"manager":                {"/manager/reboot", true},
		"manager via api":        {"/api/manager/queue/install", true},
		"manager bare":           {"/manager", true},
		"customnode without api": {"/customnode/getlist", true},
		"customnode via api":     {"/api/customnode/getlist", true},
		"manager encoded":        {"/%6danager/reboot", true},
		"manager double slash":   {"//api//manager/reboot", true},
		"manager dotdot":         {"/api/view/../manager/reboot", true},
		"manager escaped slash":  {"/api/x%2F..%2Fmanager/reboot", true},
		"userdata manager":       {"/api/userdata/ComfyUI-Manager%2Fconfig.ini", true},
		"userdata workflow":      {"/api/userdata/workflows%2Fa.json", false},
		"view":                   {"/view", false},
		"managerial":             {"/managerial", false},
		"prompt":                 {"/api/prompt", false},
	}
	checkBlocked(t, patterns, tests)
}

type blockCase struct {
	path string
	want bool
}

// checkBlocked normalises each path as the gateway does and compares
// the block_paths verdict.
func checkBlocked(t *testing.T, patterns []string, tests map[string]blockCase) {
	t.Helper()
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			c, err := normalizePath(tc.path)
			if err != nil {
				t.Fatal(err)
			}
			if got := blocked(patterns, c); got != tc.want {
				t.Errorf("blocked(%q) = %v, want %v (canonical %+v)", tc.path, got, tc.want, c)
			}
		})
	}
}

func TestMatchGlob(t *testing.T) {
	tests := map[string]struct {
		pat, name string
		want      bool
	}{
		"exact":         {"/a", "/a", true},
		"star suffix":   {"/a/*", "/a/b/c", true},
		"star middle":   {"/u/*M*", "/u/xMy", true},
		"star empty":    {"/a/*", "/a/", true},
		"no match":      {"/a/*", "/b/c", false},
		"star backtrak": {"*ab*ab", "xabyabab", true},
		"too short":     {"/abc", "/ab", false},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			if got := matchGlob(tc.pat, tc.name); got != tc.want {
				t.Errorf("matchGlob(%q, %q) = %v, want %v", tc.pat, tc.name, got, tc.want)
			}
		})
	}
}

func TestCheckOrigin(t *testing.T) {
	self := "http://gpu.example:8080"
	allowed := []string{"https://studio.example"}
	tests := map[string]struct {
		origin, site string
		want         bool
	}{
		"api client, no headers":     {"", "", true},
		"same origin":                {"http://gpu.example:8080", "same-origin", true},
		"same origin, case and port": {"HTTP://GPU.example:8080", "", true},
		"allowed other origin":       {"https://studio.example:443", "cross-site", true},
		"foreign origin":             {"https://evil.example", "cross-site", false},
		"other port":                 {"http://gpu.example:8081", "same-site", false},
		"null origin":                {"null", "cross-site", false},
		"cross-site without origin":  {"", "cross-site", false},
		"same-site without origin":   {"", "same-site", false},
		"user navigation":            {"", "none", true},
		"malformed origin":           {"gpu.example", "", false},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			if got := checkOrigin(tc.origin, tc.site, self, allowed); got.ok != tc.want {
				t.Errorf("checkOrigin(%q, %q) = %+v, want ok=%v", tc.origin, tc.site, got, tc.want)
			}
		})
	}
}

func TestRecordFailure(t *testing.T) {
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	window := 10 * time.Minute
	at := func(ds ...time.Duration) []time.Time {
		var out []time.Time
		for _, d := range ds {
			out = append(out, t0.Add(d))
		}
		return out
	}
	tests := map[string]struct {
		history []time.Time
		now     time.Time
		limit   int
		ban     bool
		kept    int
	}{
		"first failure":          {nil, t0, 5, false, 1},
		"fifth within window":    {at(0, time.Minute, 2*time.Minute, 3*time.Minute), t0.Add(4 * time.Minute), 5, true, 5},
		"old ones expired":       {at(0, time.Minute, 2*time.Minute, 3*time.Minute), t0.Add(12 * time.Minute), 5, false, 2},
		"exactly window old":     {at(0), t0.Add(window), 2, false, 1},
		"lockout off":            {at(0, 0, 0, 0, 0), t0, 0, false, 0},
		"limit one bans at once": {nil, t0, 1, true, 1},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			kept, ban := recordFailure(append([]time.Time(nil), tc.history...), tc.now, window, tc.limit)
			if ban != tc.ban || len(kept) != tc.kept {
				t.Errorf("recordFailure = kept %d ban %v, want kept %d ban %v", len(kept), ban, tc.kept, tc.ban)
			}
		})
	}
}

func TestExempt(t *testing.T) {
	pfx := []netip.Prefix{netip.MustParsePrefix("10.8.0.0/16"), netip.MustParsePrefix("192.168.1.100/32")}
	tests := map[string]struct {
		addr string
		want bool
	}{
		"in range":   {"10.8.3.4", true},
		"exact host": {"192.168.1.100", true},
		"outside":    {"10.9.0.1", false},
		"ipv6":       {"::1", false},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			if got := exempt(pfx, netip.MustParseAddr(tc.addr)); got != tc.want {
				t.Errorf("exempt(%s) = %v, want %v", tc.addr, got, tc.want)
			}
		})
	}
}

func TestPromptLimits(t *testing.T) {
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	t.Run("concurrency", func(t *testing.T) {
		p := newPromptLimits()
		p.configure(2, 0)
		for i, id := range []string{"a", "b"} {
			if v := p.reserve("alice", t0); !v.ok {
				t.Fatalf("prompt %d refused: %+v", i, v)
			}
			p.promptStarted("alice", id, t0)
		}
		if v := p.reserve("alice", t0); v.ok || v.retry <= 0 {
			t.Fatalf("third prompt: %+v, want refusal with a retry time", v)
		}
		if v := p.reserve("bob", t0); !v.ok {
			t.Fatalf("another identity was limited: %+v", v)
		}
		p.settle(map[string]bool{"b": true}, t0.Add(time.Second))
		if v := p.reserve("alice", t0); !v.ok {
			t.Fatalf("slot not freed after a prompt left the queue: %+v", v)
		}
	})
	t.Run("settle keeps prompts newer than the queue read", func(t *testing.T) {
		p := newPromptLimits()
		p.configure(1, 0)
		p.reserve("alice", t0)
		p.promptStarted("alice", "new", t0.Add(2*time.Second))
		p.settle(map[string]bool{}, t0.Add(time.Second))
		if got := p.running()["alice"]; got != 1 {
			t.Fatalf("running = %d, want 1", got)
		}
	})
	t.Run("reservation released", func(t *testing.T) {
		p := newPromptLimits()
		p.configure(1, 0)
		p.reserve("alice", t0)
		if p.reserve("alice", t0).ok {
			t.Fatal("reservation did not count")
		}
		p.releaseReservation("alice")
		if !p.reserve("alice", t0).ok {
			t.Fatal("released reservation still counted")
		}
	})
	t.Run("rate", func(t *testing.T) {
		p := newPromptLimits()
		p.configure(0, 2)
		for i := 0; i < 2; i++ {
			if v := p.reserve("alice", t0); !v.ok {
				t.Fatalf("prompt %d refused: %+v", i, v)
			}
			p.releaseReservation("alice")
		}
		v := p.reserve("alice", t0)
		if v.ok || v.retry < 25*time.Second || v.retry > 31*time.Second {
			t.Fatalf("third prompt in the same minute: %+v, want refusal with ~30s retry", v)
		}
		if v := p.reserve("alice", t0.Add(31*time.Second)); !v.ok {
			t.Fatalf("prompt after the refill refused: %+v", v)
		}
	})
}

func TestRetryAfter(t *testing.T) {
	tests := map[string]struct {
		d    time.Duration
		want int
	}{"zero": {0, 1}, "sub-second": {300 * time.Millisecond, 1}, "rounds up": {29100 * time.Millisecond, 30}, "exact": {2 * time.Second, 2}}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			if got := retryAfter(tc.d); got != tc.want {
				t.Errorf("retryAfter(%v) = %d, want %d", tc.d, got, tc.want)
			}
		})
	}
}

func TestRedactQuery(t *testing.T) {
	got := redactQuery("filename=a.png&token=secret&api_key=k&type=output")
	if strings.Contains(got, "secret") || strings.Contains(got, "=k") || !strings.Contains(got, "filename=a.png") {
		t.Errorf("redactQuery = %q", got)
	}
}

func TestWorkflowDigest(t *testing.T) {
	a := workflowDigest([]byte(`{"prompt": {"1": {"class_type": "SaveImage"}}, "extra_data": {"api_key_comfy_org": "x"}}`))
	b := workflowDigest([]byte(`{"prompt":{"1":{"class_type":"SaveImage"}},"extra_data":{"api_key_comfy_org":"y"}}`))
	if a == "" || a != b {
		t.Errorf("digests %q and %q: want equal and non-empty (extra_data must not count, whitespace must not count)", a, b)
	}
	if workflowDigest([]byte("not json")) != "" {
		t.Error("digest of a non-JSON body")
	}
}

func TestDefaultBlockPaths(t *testing.T) {
	patterns := config.Defaults().Gateway.BlockPaths
	tests := map[string]blockCase{
		"manager install":          {"/api/manager/queue/install", true},
		"manager v2":               {"/api/v2/manager/queue/start", true},
		"customnode v2":            {"/v2/customnode/installed", true},
		"snapshot":                 {"/snapshot/restore", true},
		"manager config userdata":  {"/api/userdata/ComfyUI-Manager%2Fconfig.ini", true},
		"comfyui v2 userdata list": {"/api/v2/userdata", false},
		"workflow userdata":        {"/api/userdata/workflows%2Fmine.json", false},
		"prompt":                   {"/api/prompt", false},
		"view":                     {"/view", false},
		"ws":                       {"/ws", false},
	}
	checkBlocked(t, patterns, tests)
}

func TestAuditJSON(t *testing.T) {
	recs := map[string]auditRecord{
		"full": {Time: time.Date(2026, 12, 3, 17, 0, 0, 123456789, time.UTC), Remote: "192.0.2.1", Identity: "alice", Auth: "basic",
			Method: "POST", Path: "/api/prompt", Query: "a=b&c=%22", Status: 200, Bytes: 1234, DurationMS: 1.5, PromptID: "p-1", Workflow: strings.Repeat("ab", 32), Reason: ""},
		"awkward strings": {Time: time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC), Remote: "::1", Identity: "é\"\\\n\t<x>&\u2028\x7f", Method: "GET",
			Path: "/a\x00b\xff", Status: 401, Reason: "bad credentials"},
		"minimal": {},
	}
	for name, r := range recs {
		t.Run(name, func(t *testing.T) {
			line := r.appendJSON(nil)
			var back auditRecord
			if err := json.Unmarshal(line, &back); err != nil {
				t.Fatalf("%s: %v", line, err)
			}
			want := r
			want.Path = strings.ToValidUTF8(want.Path, "\ufffd")
			if !back.Time.Equal(want.Time) {
				t.Errorf("time %v, want %v", back.Time, want.Time)
			}
			back.Time, want.Time = time.Time{}, time.Time{}
			if back != want {
				t.Errorf("round trip:\n got %+v\nwant %+v\nline %s", back, want, line)
			}
		})
	}
}
