package gateway

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/coder/websocket"
	"golang.org/x/crypto/bcrypt"

	"github.com/zguard/zguard/config"
	"github.com/zguard/zguard/gateway/credfile"
)

var pngMagic = []byte("\x89PNG\r\n\x1a\n")

// TestBrowserFlow drives the gateway the way a browser drives ComfyUI's
// UI: Basic credentials and the gateway's own Origin on every request.
func TestBrowserFlow(t *testing.T) {
	up := startComfy(t)
	h, _ := newHarness(t, up, bcrypt.MinCost, nil)
	c := client("")
	auth := basic("alice", alicePW)
	browser := map[string]string{"Authorization": auth, "Origin": h.base, "Sec-Fetch-Site": "same-origin"}

	code, _, body := do(t, c, "GET", h.base+"/", map[string]string{"Authorization": auth}, "")
	if code != 200 || !bytes.Contains(bytes.ToLower(body), []byte("<html")) {
		t.Fatalf("GET / = %d %q", code, body)
	}

	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	wsHdr := http.Header{"Authorization": {auth}, "Origin": {h.base}}
	ws, _, err := websocket.Dial(ctx, "ws"+strings.TrimPrefix(h.base, "http")+"/ws?clientId=browser1", &websocket.DialOptions{HTTPHeader: wsHdr, HTTPClient: c})
	if err != nil {
		t.Fatalf("opening /ws through the gateway: %v", err)
	}
	defer ws.CloseNow()

	code, _, body = do(t, c, "POST", h.base+"/prompt", browser, promptBody(t, workflow("browser", 5, 0), "browser1", nil))
	if code != 200 {
		t.Fatalf("POST /prompt = %d %s", code, body)
	}
	var pr struct {
		PromptID string `json:"prompt_id"`
	}
	json.Unmarshal(body, &pr)

	sawProgress := false
	var image struct{ Filename, Subfolder, Type string }
	for image.Filename == "" {
		_, msg, err := ws.Read(ctx)
		if err != nil {
			t.Fatalf("reading /ws (progress seen: %v): %v", sawProgress, err)
		}
		var m struct {
			Type string `json:"type"`
			Data struct {
				PromptID string `json:"prompt_id"`
				Output   struct {
					Images []struct{ Filename, Subfolder, Type string } `json:"images"`
				} `json:"output"`
			} `json:"data"`
		}
		json.Unmarshal(msg, &m)
		switch m.Type {
		case "progress":
			sawProgress = true
		case "executed":
			if m.Data.PromptID == pr.PromptID && len(m.Data.Output.Images) > 0 {
				image = m.Data.Output.Images[0]
			}
		}
	}
	if !sawProgress {
		t.Error("no progress message arrived over /ws")
	}
	code, _, body = do(t, c, "GET", fmt.Sprintf("%s/view?filename=%s&subfolder=%s&type=%s", h.base, image.Filename, image.Subfolder, image.Type), map[string]string{"Authorization": auth}, "")
	if code != 200 || !bytes.HasPrefix(body, pngMagic) {
		t.Fatalf("GET /view = %d, %d bytes, want a PNG", code, len(body))
	}
}

// TestAPIFlow is a script with a bearer token: no Origin, /api/ routes.
func TestAPIFlow(t *testing.T) {
	up := startComfy(t)
	h, tok := newHarness(t, up, bcrypt.MinCost, nil)
	c := client("")
	bearer := map[string]string{"Authorization": "Bearer " + tok}
	secret := "sk-comfy-org-" + strings.Repeat("9", 20)
	code, _, body := do(t, c, "POST", h.base+"/api/prompt", bearer, promptBody(t, workflow("api", 3, 0), "script", map[string]any{"api_key_comfy_org": secret}))
	if code != 200 {
		t.Fatalf("POST /api/prompt = %d %s", code, body)
	}
	var pr struct {
		PromptID string `json:"prompt_id"`
	}
	json.Unmarshal(body, &pr)
	var hist map[string]struct {
		Outputs map[string]struct {
			Images []struct{ Filename, Subfolder, Type string } `json:"images"`
		} `json:"outputs"`
	}
	waitFor(t, 20*time.Second, "the prompt in /api/history", func() bool {
		code, _, body := do(t, c, "GET", h.base+"/api/history/"+pr.PromptID, bearer, "")
		return code == 200 && json.Unmarshal(body, &hist) == nil && len(hist[pr.PromptID].Outputs) > 0
	})
	var img struct{ Filename, Subfolder, Type string }
	for _, o := range hist[pr.PromptID].Outputs {
		img = o.Images[0]
	}
	code, _, body = do(t, c, "GET", h.base+"/api/view?type=output&filename="+img.Filename, bearer, "")
	if code != 200 || !bytes.HasPrefix(body, pngMagic) {
		t.Fatalf("GET /api/view = %d, %d bytes", code, len(body))
	}

	t.Run("audit log", func(t *testing.T) {
		h.g.audit.flush()
		data, err := os.ReadFile(h.cfg.AuditLog)
		if err != nil {
			t.Fatal(err)
		}
		for _, s := range []string{tok, secret, "Bearer", alicePW} {
			if bytes.Contains(data, []byte(s)) {
				t.Errorf("audit log contains a secret (%.12s...)", s)
			}
		}
		var found bool
		for _, line := range bytes.Split(bytes.TrimSpace(data), []byte("\n")) {
			var r auditRecord
			if err := json.Unmarshal(line, &r); err != nil {
				t.Fatalf("audit line %q: %v", line, err)
			}
			if r.Method == "POST" && r.Path == "/api/prompt" {
				found = true
				if r.PromptID != pr.PromptID || len(r.Workflow) != 64 || r.Identity != "ci" || r.Auth != "bearer" || r.Status != 200 || r.Remote != "127.0.0.1" {
					t.Errorf("prompt audit record = %+v", r)
				}
			}
		}
		if !found {
			t.Errorf("no audit record for POST /api/prompt in:\n%s", data)
		}
	})

	t.Run("audit log reopened on Apply", func(t *testing.T) {
		rotated := h.cfg.AuditLog + ".1"
		if err := os.Rename(h.cfg.AuditLog, rotated); err != nil {
			t.Fatal(err)
		}
		if err := h.g.Apply(context.Background(), h.cfg); err != nil {
			t.Fatal(err)
		}
		do(t, c, "GET", h.base+"/api/system_stats", bearer, "")
		h.g.audit.flush()
		data, err := os.ReadFile(h.cfg.AuditLog)
		if err != nil || !bytes.Contains(data, []byte(`"/api/system_stats"`)) {
			t.Fatalf("new audit log after rotation: %q, %v", data, err)
		}
		if fi, _ := os.Stat(h.cfg.AuditLog); fi.Mode().Perm() != 0o600 {
			t.Errorf("audit log mode %v, want 0600", fi.Mode().Perm())
		}
	})
}

// TestUnauthenticatedRefused checks that nothing, under any spelling,
// reaches ComfyUI without credentials, and that the spellings are
// normalised rather than refused when credentials are present.
func TestUnauthenticatedRefused(t *testing.T) {
	up := startComfy(t)
	h, tok := newHarness(t, up, bcrypt.MinCost, func(c *config.Gateway) { c.Lockout.Failures = 0 })
	hostport := strings.TrimPrefix(h.base, "http://")
	paths := []string{"/", "/view?filename=x.png", "/api/view?filename=x.png", "//view?filename=x.png", "/%76iew?filename=x.png",
		"/api/../view?filename=x.png", "/%2e%2e/api/view", "/ws?clientId=x", "/api/system_stats", "/extensions/core/x.js",
		"/system_stats?token=" + tok, "/api/system_stats?access_token=" + tok}
	for _, p := range paths {
		t.Run(strings.ReplaceAll(p, tok, "TOKEN"), func(t *testing.T) {
			if code := rawGet(t, hostport, p, nil); code != http.StatusUnauthorized {
				t.Errorf("no credentials: GET %s = %d, want 401", p, code)
			}
			if code := rawGet(t, hostport, p, map[string]string{"Authorization": basic("alice", "wrong-password-123")}); code != http.StatusUnauthorized {
				t.Errorf("wrong password: GET %s = %d, want 401", p, code)
			}
			if code := rawGet(t, hostport, p, map[string]string{"Authorization": "Bearer " + tok + "x"}); code != http.StatusUnauthorized {
				t.Errorf("wrong token: GET %s = %d, want 401", p, code)
			}
		})
	}
	for _, p := range []string{"//system_stats", "/%73ystem_stats", "/api/../system_stats", "/api/%2e%2e/api/system_stats"} {
		t.Run("authenticated "+p, func(t *testing.T) {
			if code := rawGet(t, hostport, p, map[string]string{"Authorization": basic("alice", alicePW)}); code != 200 {
				t.Errorf("GET %s with credentials = %d, want 200 from ComfyUI", p, code)
			}
		})
	}
	t.Run("blocked paths", func(t *testing.T) {
		for _, p := range []string{"/manager/reboot", "/api/manager/reboot", "//manager/reboot", "/%6danager/reboot", "/api/view/../manager/reboot"} {
			if code := rawGet(t, hostport, p, map[string]string{"Authorization": basic("alice", alicePW)}); code != http.StatusForbidden {
				t.Errorf("GET %s as alice = %d, want 403", p, code)
			}
		}
	})
	t.Run("admin passes block_paths", func(t *testing.T) {
		hash, _ := credfile.HashPassword("root-long-password", bcrypt.MinCost)
		h.write("htpasswd", credfile.HtpasswdLine("root", hash)+"\n")
		if err := h.g.Apply(context.Background(), h.cfg); err != nil {
			t.Fatal(err)
		}
		if code := rawGet(t, hostport, "/api/manager/reboot", map[string]string{"Authorization": basic("root", "root-long-password")}); code != 200 {
			t.Errorf("GET /api/manager/reboot as admin = %d, want 200", code)
		}
	})
}

// TestCrossSiteRefused: a foreign page cannot use the browser's cached
// Basic credentials to queue prompts or open /ws.
func TestCrossSiteRefused(t *testing.T) {
	up := startComfy(t)
	h, _ := newHarness(t, up, bcrypt.MinCost, func(c *config.Gateway) { c.AllowedOrigins = []string{"https://studio.example"} })
	c := client("")
	auth := basic("alice", alicePW)
	before := fakeStats(t, up).Prompts
	for name, hdr := range map[string]map[string]string{
		"foreign origin":        {"Origin": "https://evil.example", "Sec-Fetch-Site": "cross-site"},
		"no origin, cross":      {"Sec-Fetch-Site": "cross-site"},
		"null origin":           {"Origin": "null"},
		"same host, other port": {"Origin": "http://127.0.0.1:1"},
	} {
		hdr["Authorization"] = auth
		hdr["Content-Type"] = "application/json"
		code, _, _ := do(t, c, "POST", h.base+"/api/prompt", hdr, promptBody(t, workflow("evil", 1, 0), "x", nil))
		if code != http.StatusForbidden {
			t.Errorf("%s: POST /api/prompt = %d, want 403", name, code)
		}
	}
	if after := fakeStats(t, up).Prompts; after != before {
		t.Fatalf("ComfyUI received %d prompts from cross-site requests", after-before)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	_, resp, err := websocket.Dial(ctx, "ws"+strings.TrimPrefix(h.base, "http")+"/ws", &websocket.DialOptions{
		HTTPHeader: http.Header{"Authorization": {auth}, "Origin": {"https://evil.example"}}, HTTPClient: c})
	if err == nil || resp == nil || resp.StatusCode != http.StatusForbidden {
		t.Errorf("cross-site /ws: err %v, resp %v, want 403", err, resp)
	}
	code, _, _ := do(t, c, "POST", h.base+"/api/prompt", map[string]string{"Authorization": auth, "Origin": "https://studio.example"}, promptBody(t, workflow("ok", 1, 0), "x", nil))
	if code != 200 {
		t.Errorf("allowed origin: POST /api/prompt = %d, want 200 (ComfyUI must not see the foreign Origin)", code)
	}
}

// TestLockout: failed logins from one address ban it (Banner called), cut
// its open connections (a keep-alive HTTP one and a WebSocket) and refuse
// new ones, while another address that logged in meanwhile is untouched.
func TestLockout(t *testing.T) {
	up := startComfy(t)
	h, _ := newHarness(t, up, bcrypt.MinCost, nil) // failures = 5, window 10m, ban 1h
	attacker, other := "127.0.0.2", "127.0.0.3"
	hostport := strings.TrimPrefix(h.base, "http://")

	// The attacker's established keep-alive connection (its owner logged in
	// before) and WebSocket.
	keep := dialFrom(t, attacker, hostport)
	if code := keepAliveGet(t, keep, hostport, basic("alice", alicePW)); code != 200 {
		t.Fatalf("keep-alive GET = %d", code)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	ws, _, err := websocket.Dial(ctx, "ws://"+hostport+"/ws?clientId=victim", &websocket.DialOptions{
		HTTPHeader: http.Header{"Authorization": {basic("alice", alicePW)}}, HTTPClient: client(attacker)})
	if err != nil {
		t.Fatal(err)
	}
	defer ws.CloseNow()
	if _, _, err := ws.Read(ctx); err != nil { // the initial status message
		t.Fatal(err)
	}

	ac, oc := client(attacker), client(other)
	for i := 1; i <= 4; i++ {
		code, _, _ := do(t, ac, "GET", h.base+"/", map[string]string{"Authorization": basic("alice", fmt.Sprintf("guess-%d-xxxxxxxx", i))}, "")
		if code != http.StatusUnauthorized {
			t.Fatalf("failure %d: %d, want 401", i, code)
		}
	}
	if code, _, _ := do(t, oc, "GET", h.base+"/", map[string]string{"Authorization": basic("alice", alicePW)}, ""); code != 200 {
		t.Fatalf("other address login = %d", code)
	}
	if len(h.banner.banned()) != 0 {
		t.Fatal("banned before the fifth failure")
	}
	code, _, _ := do(t, ac, "GET", h.base+"/", map[string]string{"Authorization": basic("bob", "guess-5-xxxxxxxx")}, "")
	if code != http.StatusForbidden {
		t.Fatalf("fifth failure = %d, want 403", code)
	}
	if got := h.banner.banned(); len(got) != 1 || got[0] != netip.MustParseAddr(attacker) || h.banner.durs[0] != time.Hour {
		t.Fatalf("bans = %v %v, want [%s] for 1h", got, h.banner.durs, attacker)
	}
	// Sixth attempt: a new connection is closed at accept.
	c6 := dialFrom(t, attacker, hostport)
	c6.SetDeadline(time.Now().Add(5 * time.Second))
	fmt.Fprintf(c6, "GET / HTTP/1.1\r\nHost: %s\r\nAuthorization: %s\r\n\r\n", hostport, basic("alice", alicePW))
	if n, err := c6.Read(make([]byte, 1)); err == nil {
		t.Errorf("banned address got %d bytes of an answer on a new connection", n)
	}
	// The established connections are gone.
	keep.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := keep.Read(make([]byte, 1)); err == nil || isTimeout(err) {
		t.Errorf("keep-alive connection of the banned address still open (read: %v)", err)
	}
	if _, _, err := ws.Read(ctx); err == nil {
		t.Error("WebSocket of the banned address still open")
	}
	// The other address still works, and status shows the ban.
	if code, _, _ := do(t, oc, "GET", h.base+"/system_stats", map[string]string{"Authorization": basic("alice", alicePW)}, ""); code != 200 {
		t.Errorf("other address after the ban = %d", code)
	}
	st := h.g.Status()
	if len(st.Banned) != 1 || st.Banned[0].Addr != attacker || !st.Banned[0].Firewall {
		t.Errorf("status bans = %+v", st.Banned)
	}
	if st.AuthFailures != 5 {
		t.Errorf("auth_failures = %d, want 5", st.AuthFailures)
	}
}

func TestLockoutExempt(t *testing.T) {
	h, _ := newHarness(t, "", bcrypt.MinCost, func(c *config.Gateway) {
		c.Lockout.Failures = 2
		c.LockoutExempt = []string{"127.0.0.4/32"}
	})
	ex := client("127.0.0.4")
	for i := 0; i < 5; i++ {
		if code, _, _ := do(t, ex, "GET", h.base+"/", map[string]string{"Authorization": basic("alice", "nope-nope-nope")}, ""); code != 401 {
			t.Fatalf("exempt address attempt %d = %d, want 401", i, code)
		}
	}
	if b := h.banner.banned(); len(b) != 0 {
		t.Fatalf("exempt address banned: %v", b)
	}
}

func dialFrom(t *testing.T, src, hostport string) net.Conn {
	t.Helper()
	d := net.Dialer{Timeout: 5 * time.Second, LocalAddr: &net.TCPAddr{IP: net.ParseIP(src)}}
	c, err := d.Dial("tcp", hostport)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func keepAliveGet(t *testing.T, c net.Conn, host, auth string) int {
	t.Helper()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	fmt.Fprintf(c, "GET /system_stats HTTP/1.1\r\nHost: %s\r\nAuthorization: %s\r\n\r\n", host, auth)
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		t.Fatal(err)
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	c.SetDeadline(time.Time{})
	return resp.StatusCode
}

func isTimeout(err error) bool {
	ne, ok := err.(net.Error)
	return ok && ne.Timeout()
}

// TestTimingUnknownUserVsWrongPassword: an attacker must not learn which
// user names exist. Both cases pay one bcrypt of the same cost; the medians
// of interleaved samples must agree within a generous factor.
func TestTimingUnknownUserVsWrongPassword(t *testing.T) {
	if testing.Short() {
		t.Skip("bcrypt cost 10 timing samples")
	}
	h, _ := newHarness(t, "", bcrypt.DefaultCost, func(c *config.Gateway) { c.Lockout.Failures = 0 })
	c := client("")
	const n = 15
	var known, unknown []time.Duration
	measure := func(user string, i int) time.Duration {
		start := time.Now()
		code, _, _ := do(t, c, "GET", h.base+"/", map[string]string{"Authorization": basic(user, fmt.Sprintf("distinct-guess-%d-%s", i, user))}, "")
		if code != 401 {
			t.Fatalf("%s: %d, want 401", user, code)
		}
		return time.Since(start)
	}
	measure("alice", -1) // warm the connection
	for i := 0; i < n; i++ {
		known = append(known, measure("alice", i))
		unknown = append(unknown, measure(fmt.Sprintf("mallory%d", i), i))
	}
	mk, mu := median(known), median(unknown)
	ratio := float64(mk) / float64(mu)
	t.Logf("median wrong password %v, unknown user %v (ratio %.2f)", mk, mu, ratio)
	if mk < 5*time.Millisecond {
		t.Fatalf("wrong-password median %v: no bcrypt happened?", mk)
	}
	if ratio < 0.5 || ratio > 2 { // a skipped bcrypt would be a ratio of ~100
		t.Errorf("timing distinguishes unknown users: ratio %.2f", ratio)
	}
}

func median(ds []time.Duration) time.Duration {
	s := slices.Clone(ds)
	sort.Slice(s, func(i, j int) bool { return s[i] < s[j] })
	return s[len(s)/2]
}

// TestVerdictCache: a page load of many parallel requests with the same
// credentials costs one bcrypt (singleflight + cache); failures are cached too.
func TestVerdictCache(t *testing.T) {
	up := startComfy(t)
	h, _ := newHarness(t, up, bcrypt.DefaultCost, func(c *config.Gateway) { c.Lockout.Failures = 0 })
	c := client("")
	var wg sync.WaitGroup
	codes := make([]int, 40)
	for i := range codes {
		wg.Add(1)
		go func() {
			defer wg.Done()
			codes[i], _, _ = do(t, c, "GET", h.base+"/system_stats", map[string]string{"Authorization": basic("alice", alicePW)}, "")
		}()
	}
	wg.Wait()
	for i, code := range codes {
		if code != 200 {
			t.Fatalf("request %d = %d", i, code)
		}
	}
	if n := h.g.auth.bcrypts.Load(); n != 1 {
		t.Errorf("40 parallel requests cost %d bcrypt verifications, want 1", n)
	}
	for i := 0; i < 3; i++ {
		do(t, c, "GET", h.base+"/", map[string]string{"Authorization": basic("alice", "same-wrong-password")}, "")
	}
	if n := h.g.auth.bcrypts.Load(); n != 2 {
		t.Errorf("after a repeated wrong password: %d bcrypts, want 2", n)
	}
}

// TestPromptLimits: the third concurrent prompt is refused with 429 and
// Retry-After, and the slot comes back when ComfyUI finishes a prompt.
func TestPromptLimitsEndToEnd(t *testing.T) {
	up := startComfy(t)
	t.Run("concurrent", func(t *testing.T) {
		h, tok := newHarness(t, up, bcrypt.MinCost, func(c *config.Gateway) { c.MaxConcurrentPrompts = 2; c.PromptsPerMinute = 0 })
		c := client("")
		bearer := map[string]string{"Authorization": "Bearer " + tok}
		for i := 0; i < 2; i++ {
			if code, _, b := do(t, c, "POST", h.base+"/prompt", bearer, promptBody(t, workflow("slow", 0, 1), "", nil)); code != 200 {
				t.Fatalf("prompt %d = %d %s", i, code, b)
			}
		}
		code, hdr, _ := do(t, c, "POST", h.base+"/prompt", bearer, promptBody(t, workflow("slow", 0, 1), "", nil))
		if code != http.StatusTooManyRequests || hdr.Get("Retry-After") == "" {
			t.Fatalf("third concurrent prompt = %d (Retry-After %q), want 429 with Retry-After", code, hdr.Get("Retry-After"))
		}
		// Another identity is not affected.
		if code, _, _ := do(t, c, "POST", h.base+"/prompt", map[string]string{"Authorization": basic("alice", alicePW)}, promptBody(t, workflow("alice", 1, 0), "", nil)); code != 200 {
			t.Fatalf("alice's prompt = %d", code)
		}
		// Once ComfyUI has run them, slots are free again.
		waitFor(t, 20*time.Second, "a free prompt slot", func() bool {
			code, _, _ := do(t, c, "POST", h.base+"/prompt", bearer, promptBody(t, workflow("later", 1, 0), "", nil))
			return code == 200
		})
	})
	t.Run("rate", func(t *testing.T) {
		h, _ := newHarness(t, up, bcrypt.MinCost, func(c *config.Gateway) { c.MaxConcurrentPrompts = 0; c.PromptsPerMinute = 2 })
		c := client("")
		auth := map[string]string{"Authorization": basic("alice", alicePW)}
		for i := 0; i < 2; i++ {
			if code, _, _ := do(t, c, "POST", h.base+"/api/prompt", auth, promptBody(t, workflow("r", 1, 0), "", nil)); code != 200 {
				t.Fatalf("prompt %d = %d", i, code)
			}
		}
		code, hdr, _ := do(t, c, "POST", h.base+"/api/prompt", auth, promptBody(t, workflow("r", 1, 0), "", nil))
		ra, _ := strconv.Atoi(hdr.Get("Retry-After"))
		if code != http.StatusTooManyRequests || ra < 1 || ra > 60 {
			t.Fatalf("third prompt in a minute = %d (Retry-After %q), want 429 with 1..60", code, hdr.Get("Retry-After"))
		}
	})
	t.Run("max body", func(t *testing.T) {
		h, _ := newHarness(t, up, bcrypt.MinCost, func(c *config.Gateway) { c.MaxBody = 1024 })
		c := client("")
		auth := map[string]string{"Authorization": basic("alice", alicePW)}
		big := promptBody(t, workflow(strings.Repeat("x", 2048), 1, 0), "", nil)
		if code, _, _ := do(t, c, "POST", h.base+"/prompt", auth, big); code != http.StatusRequestEntityTooLarge {
			t.Errorf("2 KiB prompt with max_body 1KiB = %d, want 413", code)
		}
		// A chunked upload with no Content-Length is cut off while streaming.
		req, _ := http.NewRequest("POST", h.base+"/upload/image", io.MultiReader(strings.NewReader(strings.Repeat("y", 4096))))
		req.Header.Set("Authorization", auth["Authorization"])
		req.Header.Set("Content-Type", "multipart/form-data; boundary=zz")
		req.ContentLength = -1
		resp, err := c.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusRequestEntityTooLarge {
			t.Errorf("chunked 4 KiB upload = %d, want 413", resp.StatusCode)
		}
	})
}

// TestCredentialReload: file edits take effect without a restart; a
// malformed file is refused with its line number and the old one stays.
func TestCredentialReload(t *testing.T) {
	up := startComfy(t)
	h, tok := newHarness(t, up, bcrypt.MinCost, func(c *config.Gateway) { c.Lockout.Failures = 0 })
	c := client("")
	get := func(auth string) int {
		code, _, _ := do(t, c, "GET", h.base+"/system_stats", map[string]string{"Authorization": auth}, "")
		return code
	}
	aliceHash, _ := os.ReadFile(filepath.Join(h.dir, "htpasswd"))
	bobHash, _ := credfile.HashPassword(bobPW, bcrypt.MinCost)
	h.write("htpasswd", string(aliceHash)+credfile.HtpasswdLine("bob", bobHash)+"\n")
	waitFor(t, 5*time.Second, "bob to be accepted after the htpasswd edit", func() bool { return get(basic("bob", bobPW)) == 200 })

	tok2, _ := credfile.NewToken()
	h.write("tokens", credfile.TokenLine("cd", credfile.DigestToken(tok2))+"\n")
	waitFor(t, 5*time.Second, "the new token", func() bool { return get("Bearer "+tok2) == 200 })
	if code := get("Bearer " + tok); code != 401 {
		t.Errorf("removed token still accepted: %d", code)
	}

	h.write("htpasswd", credfile.HtpasswdLine("bob", bobHash)+"\nbroken line\n")
	waitFor(t, 5*time.Second, "the reload error in status", func() bool { return h.g.Status().CredentialError != "" })
	st := h.g.Status()
	if !strings.Contains(st.CredentialError, "htpasswd:2:") {
		t.Errorf("credential error %q does not name line 2", st.CredentialError)
	}
	if get(basic("alice", alicePW)) != 200 || get(basic("bob", bobPW)) != 200 {
		t.Error("the previous htpasswd is not in force after a malformed edit")
	}
	if len(st.Findings()) == 0 {
		t.Error("no finding for the failed reload")
	}
	err := h.g.Apply(context.Background(), h.cfg)
	if err == nil || !strings.Contains(err.Error(), "htpasswd:2:") {
		t.Fatalf("Apply with a malformed htpasswd: %v, want an error naming line 2", err)
	}
	if get(basic("alice", alicePW)) != 200 {
		t.Error("Apply error replaced the credentials in force")
	}
}

// TestApplyListenersAndDisable: listeners follow the config; disabling
// closes them and the connections.
func TestApplyListenersAndDisable(t *testing.T) {
	h, _ := newHarness(t, "", bcrypt.MinCost, nil)
	first := h.g.boundAddrs()
	cfg := h.cfg
	cfg.Listen = []string{"127.0.0.1:0", "127.0.0.5:0"}
	if err := h.g.Apply(context.Background(), cfg); err != nil {
		t.Fatal(err)
	}
	now := h.g.boundAddrs()
	if len(now) != 2 || !slices.Contains(now, first[0]) {
		t.Fatalf("listeners %v after adding one (kept %v?)", now, first)
	}
	bad := cfg
	bad.Listen = []string{"127.0.0.1:0", "192.0.2.1:80"} // not a local address
	if err := h.g.Apply(context.Background(), bad); err == nil {
		t.Fatal("Apply with an unbindable address succeeded")
	}
	if got := h.g.boundAddrs(); len(got) != 2 {
		t.Fatalf("failed Apply changed listeners: %v", got)
	}
	conn, err := net.Dial("tcp", first[0])
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	off := cfg
	off.Enabled = false
	if err := h.g.Apply(context.Background(), off); err != nil {
		t.Fatal(err)
	}
	if _, err := net.DialTimeout("tcp", first[0], time.Second); err == nil {
		t.Error("listener still accepting after enabled=false")
	}
	conn.SetDeadline(time.Now().Add(3 * time.Second))
	if _, err := conn.Read(make([]byte, 1)); err == nil || isTimeout(err) {
		t.Errorf("open connection survived enabled=false: %v", err)
	}
	if st := h.g.Status(); st.Enabled || len(st.Listen) != 0 || st.Findings() != nil {
		t.Errorf("status after disable = %+v", st)
	}
}

func TestStatusFindings(t *testing.T) {
	tests := map[string]struct {
		st    Status
		worst string
		n     int
	}{
		"disabled":              {Status{}, "", 0},
		"healthy loopback":      {Status{Enabled: true, Listen: []string{"127.0.0.1:8080"}, Identities: 1}, "", 0},
		"clear text on the LAN": {Status{Enabled: true, Listen: []string{"0.0.0.0:8080"}, Identities: 1}, "WARNING", 1},
		"tls on the LAN":        {Status{Enabled: true, TLS: true, Listen: []string{"0.0.0.0:8080"}, Identities: 1}, "", 0},
		"nobody can log in":     {Status{Enabled: true, TLS: true, Listen: []string{"[::]:8080"}}, "CRITICAL", 1},
		"reload failed":         {Status{Enabled: true, TLS: true, Identities: 2, CredentialError: "x:2: bad"}, "WARNING", 1},
		"firewall refused ban":  {Status{Enabled: true, TLS: true, Identities: 2, Banned: []Ban{{Addr: "192.0.2.1", Error: "no chain"}}}, "WARNING", 1},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			fs := tc.st.Findings()
			worst := ""
			for _, f := range fs {
				if l := f.Level.String(); worst == "" || l == "CRITICAL" {
					worst = l
				}
			}
			if len(fs) != tc.n || worst != tc.worst {
				t.Errorf("findings = %+v, want %d with worst %q", fs, tc.n, tc.worst)
			}
		})
	}
}
