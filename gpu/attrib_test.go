package gpu

import (
	"strings"
	"testing"
)

func TestContainerOf(t *testing.T) {
	p := procFS{root: "testdata/proc"}
	cases := map[string]struct {
		pid  int
		want string
	}{
		"cgroup v1 /docker/<id>":         {100, strings.Repeat("a", 64)},
		"cgroup v2 docker-<id>.scope":    {200, strings.Repeat("b", 64)},
		"host process":                   {300, ""},
		"kubepods cri-containerd scope":  {400, strings.Repeat("c", 64)},
		"docker in docker: innermost id": {500, strings.Repeat("e", 64)},
		"crio scope":                     {600, "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"},
	}
	for name, tc := range cases {
		t.Run(name, func(t *testing.T) {
			got, err := p.containerOf(tc.pid)
			if err != nil || got != tc.want {
				t.Errorf("containerOf(%d) = %q, %v; want %q", tc.pid, got, err, tc.want)
			}
		})
	}
	if _, err := p.containerOf(999); err == nil {
		t.Error("containerOf(vanished pid) returned no error")
	}
}

func TestParseCgroup(t *testing.T) {
	id := strings.Repeat("f", 64)
	cases := map[string]struct {
		in   string
		want string
	}{
		"empty":                     {"", ""},
		"v2 cgroupfs driver":        {"0::/docker/" + id + "\n", id},
		"kubepods cgroupfs":         {"0::/kubepods/burstable/pod123/" + id + "\n", id},
		"libpod":                    {"0::/machine.slice/libpod-" + id + ".scope/container\n", id},
		"too short is not an id":    {"0::/docker/" + id[:63] + "\n", ""},
		"upper case is not an id":   {"0::/docker/" + strings.ToUpper(id) + "\n", ""},
		"id with a suffix is not":   {"0::/docker/" + id + "x\n", ""},
		"garbage lines are skipped": {"junk\n1:x\n0::/docker/" + id + "\n", id},
	}
	for name, tc := range cases {
		t.Run(name, func(t *testing.T) {
			if got := parseCgroup([]byte(tc.in)); got != tc.want {
				t.Errorf("parseCgroup = %q, want %q", got, tc.want)
			}
		})
	}
}

func FuzzParseCgroup(f *testing.F) {
	f.Add("0::/system.slice/docker-" + strings.Repeat("b", 64) + ".scope\n")
	f.Add("12:memory:/docker/" + strings.Repeat("a", 64) + "\n0::/\n")
	f.Add("::::\n\n:")
	f.Fuzz(func(t *testing.T, s string) {
		id := parseCgroup([]byte(s))
		if id != "" && (len(id) != 64 || strings.Trim(id, "0123456789abcdef") != "") {
			t.Errorf("parseCgroup(%q) = %q: not a 64-hex id", s, id)
		}
		if id != "" && !strings.Contains(s, id) {
			t.Errorf("parseCgroup(%q) = %q: not in the input", s, id)
		}
	})
}
