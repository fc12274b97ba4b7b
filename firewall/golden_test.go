package firewall

import (
	"context"
	"encoding/json"
	"flag"
	"net/netip"
	"os"
	"path/filepath"
	"testing"
	"time"
)

var update = flag.Bool("update", false, "rewrite the golden files in testdata/")

// golden compares got with testdata/name, or rewrites it under -update.
func golden(t *testing.T, name string, got []byte) {
	t.Helper()
	path := filepath.Join("testdata", name)
	if *update {
		if err := os.MkdirAll("testdata", 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(path, got, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("reading golden file (run with -update to create it): %v", err)
	}
	if string(got) != string(want) {
		t.Errorf("%s differs (run go test -run %s -update to accept):\ngot:\n%s\nwant:\n%s", name, t.Name(), got, want)
	}
}

// TestGoldenRestoreScript pins the whole first install (both families,
// leak guard, bans) as iptables-restore input.
func TestGoldenRestoreScript(t *testing.T) {
	s := spec{
		names:     namesFor("ZGUARD"),
		allow:     []netip.Prefix{netip.MustParsePrefix("203.0.113.7/32"), netip.MustParsePrefix("198.51.100.0/24"), netip.MustParsePrefix("2001:db8::/48")},
		bans:      []netip.Addr{netip.MustParseAddr("192.0.2.66")},
		banUntil:  map[netip.Addr]int64{netip.MustParseAddr("192.0.2.66"): 1777636800},
		protect:   []int{8080},
		block:     []int{8188, 8888},
		leakPorts: []int{8188, 8888},
	}
	empty, _ := parseSave([]byte("*filter\n:INPUT ACCEPT [0:0]\n:FORWARD DROP [0:0]\n:OUTPUT ACCEPT [0:0]\n:DOCKER-USER - [0:0]\n-A FORWARD -j DOCKER-USER\n-A DOCKER-USER -j RETURN\nCOMMIT\n"))
	var out []byte
	for _, fam := range []family{ipv4, ipv6} {
		ch := diff(render(s, fam), empty, haveSets{}, s.names)
		out = append(out, "# "+fam.String()+"\n"...)
		out = append(out, ch.restore...)
	}
	golden(t, "restore.golden", out)
}

// TestGoldenStatus pins the status JSON the agent serves.
func TestGoldenStatus(t *testing.T) {
	fn := newFakeNet().withDocker()
	fw, _, _ := newFake(t, fn, "20.10.24")
	if err := fw.Apply(context.Background(), fakeConfig("203.0.113.7", "2001:db8::/48")); err != nil {
		t.Fatal(err)
	}
	if err := fw.Ban(netip.MustParseAddr("192.0.2.66"), time.Hour); err != nil {
		t.Fatal(err)
	}
	reconcileNow(t, fw, "timer") // counters are read at the start of a reconcile
	st := fw.Status()
	st.LastDuration = "1ms" // wall-clock, not part of the contract
	b, err := json.MarshalIndent(st, "", "  ")
	if err != nil {
		t.Fatal(err)
	}
	golden(t, "status.golden.json", append(b, '\n'))
}
