package outputlock

import (
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/zguard/zguard/health"
)

// TestStatusJSONContract checks the keys DESIGN.md promises for "output".
func TestStatusJSONContract(t *testing.T) {
	now := time.Date(2026, 12, 3, 17, 0, 0, 0, time.UTC)
	s := Status{Enabled: true, Path: "/root/output", Mode: "0700/0600", Owner: "root:root", InSync: true, Fixed: 3,
		Root:        Root{Exists: true, WantedOwner: "0:0", WantedMode: "0700", ActualOwner: "0:0", ActualMode: "0700"},
		LastPass:    &Pass{Start: now, Reason: "periodic"},
		LastSymlink: &Found{Path: "x", Action: "reported", Time: now}}
	b, err := json.Marshal(s)
	if err != nil {
		t.Fatal(err)
	}
	var m map[string]any
	if err := json.Unmarshal(b, &m); err != nil {
		t.Fatal(err)
	}
	for _, k := range []string{"path", "mode", "owner", "in_sync", "fixed", "root", "last_pass", "last_symlink", "watching"} {
		if _, ok := m[k]; !ok {
			t.Errorf("status JSON lacks %q: %s", k, b)
		}
	}
	root := m["root"].(map[string]any)
	for _, k := range []string{"wanted_owner", "wanted_mode", "actual_owner", "actual_mode", "exists"} {
		if _, ok := root[k]; !ok {
			t.Errorf("root lacks %q: %s", k, b)
		}
	}
	if strings.Contains(string(b), "unresolved") || strings.Contains(string(b), "passErr") {
		t.Errorf("internal fields leak into JSON: %s", b)
	}
}

func TestFindings(t *testing.T) {
	now := time.Date(2026, 12, 3, 17, 0, 0, 0, time.UTC)
	pass := &Pass{Start: now}
	ok := Status{Enabled: true, Path: "/o", InSync: true, LastPass: pass,
		Root: Root{Exists: true, WantedOwner: "0:0", WantedMode: "0700", ActualOwner: "0:0", ActualMode: "0700"}}
	with := func(f func(*Status)) Status { s := ok; f(&s); return s }
	cases := map[string]struct {
		s    Status
		want []string // substrings, one per finding, in order
	}{
		"disabled": {Status{}, nil},
		"all well": {ok, nil},
		"not yet":  {with(func(s *Status) { s.LastPass = nil }), []string{"not been locked yet"}},
		"missing":  {with(func(s *Status) { s.Root.Exists, s.passErr, s.InSync = false, "no such file", false }), []string{"cannot be locked: no such file"}},
		"not in sync": {with(func(s *Status) {
			s.InSync = false
			s.Root.ActualMode = "0755"
			s.Errors = []ErrorEntry{{Error: "changing mode: read-only file system"}}
		}), []string{"not in sync"}},
		"old symlink was before the pass": {with(func(s *Status) { s.LastSymlink = &Found{Path: "l", Time: now.Add(-time.Minute)} }), nil},
		"symlink since the pass":          {with(func(s *Status) { s.LastSymlink = &Found{Path: "l", Action: "removed", Time: now} }), []string{"symlink in output folder: l, removed"}},
		"hard link and fifo": {with(func(s *Status) {
			s.InSync = false
			s.LastHardlink = &Found{Path: "h", Action: "left unchanged", Time: now}
			s.LastOddFile = &Found{Path: "f", Detail: "fifo", Action: "reported", Time: now.Add(time.Second)}
		}), []string{"not in sync", "hard link", "special file in output folder: f (fifo)"}},
		"watch failed": {with(func(s *Status) { s.WatchError = "too many open files" }), []string{"not watching"}},
	}
	for name, c := range cases {
		t.Run(name, func(t *testing.T) {
			fs := c.s.Findings()
			if len(fs) != len(c.want) {
				t.Fatalf("findings %v, want %d", fs, len(c.want))
			}
			for i, f := range fs {
				if f.Level != health.Warning || f.Subsystem != "output" || !strings.Contains(f.Msg, c.want[i]) {
					t.Errorf("finding %d = %+v, want a WARNING saying %q", i, f, c.want[i])
				}
			}
		})
	}
}
