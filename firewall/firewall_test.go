package firewall

import (
	"context"
	"fmt"
	"net/netip"
	"os/exec"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/zguard/zguard/config"
	"github.com/zguard/zguard/health"
)

func fakeConfig(allow ...string) config.Firewall {
	cfg := config.Defaults().Firewall
	cfg.Allow = allow
	cfg.ProtectPorts = []int{8080}
	cfg.BlockPorts = []int{8188, 8888}
	cfg.ChainPrefix = "ZG"
	return cfg
}

type fakeClock struct{ t time.Time }

func (c *fakeClock) now() time.Time { return c.t }

func newFake(t *testing.T, fn *fakeNet, engine string) (*Firewall, *fakeConntrack, *fakeClock) {
	t.Helper()
	clock := &fakeClock{t: time.Date(2026, 5, 1, 12, 0, 0, 0, time.UTC)}
	ct := &fakeConntrack{local: map[netip.Addr]bool{netip.MustParseAddr("192.0.2.10"): true}}
	fw := New(Deps{
		Log:            testLogger(t),
		Now:            clock.now,
		EngineVersion:  func() string { return engine },
		PublishedPorts: func() []int { return []int{8188} },
		cmd:            fn,
		ct:             ct,
	})
	return fw, ct, clock
}

func reconcileNow(t *testing.T, fw *Firewall, reason string) {
	t.Helper()
	fw.mu.Lock()
	defer fw.mu.Unlock()
	if err := fw.reconcileLocked(context.Background(), reason, false); err != nil {
		t.Fatalf("reconcile: %v", err)
	}
}

func TestApplyInstallsChainsWithJumpsFirst(t *testing.T) {
	fn := newFakeNet().withDocker()
	fw, _, _ := newFake(t, fn, "20.10.24")
	if err := fw.Apply(context.Background(), fakeConfig("203.0.113.7", "2001:db8::/48")); err != nil {
		t.Fatal(err)
	}
	cases := map[string]struct {
		tool, key string
		want      []string
	}{
		"INPUT jumps to zguard first":           {"iptables", "filter/INPUT", []string{"-j ZG-INPUT"}},
		"DOCKER-USER jumps to zguard first":     {"iptables", "filter/DOCKER-USER", []string{"-j ZG-FORWARD", "-j RETURN"}},
		"Docker's FORWARD jump left alone":      {"iptables", "filter/FORWARD", []string{"-j DOCKER-USER", "-o docker0 -j DOCKER"}},
		"raw leak guard hooked (engine < 28)":   {"iptables", "raw/PREROUTING", []string{"-j ZG-RAW"}},
		"IPv6 DOCKER-USER created and hooked":   {"ip6tables", "filter/DOCKER-USER", []string{"-j ZG-FORWARD"}},
		"IPv6 FORWARD gets zguard's own jump":   {"ip6tables", "filter/FORWARD", []string{`-m comment --comment "zguard:ZG" -j DOCKER-USER`}},
		"no IPv6 leak guard":                    {"ip6tables", "raw/PREROUTING", nil},
		"v4 gate: allowed address then deny":    {"iptables", "filter/ZG-GATE", []string{"-s 203.0.113.7/32 -j RETURN", `-m comment --comment "zguard:deny" -j DROP`}},
		"v6 gate: allowed prefix then deny":     {"ip6tables", "filter/ZG-GATE", []string{"-s 2001:db8::/48 -j RETURN", `-m comment --comment "zguard:deny" -j DROP`}},
		"leak guard covers published + blocked": {"iptables", "raw/ZG-RAW", []string{`-d 127.0.0.0/8 ! -i lo -p tcp -m multiport --dports 8188,8888 -m comment --comment "zguard:leak-guard" -j DROP`, `-d 127.0.0.0/8 ! -i lo -p udp -m multiport --dports 8188,8888 -m comment --comment "zguard:leak-guard" -j DROP`}},
		"input: loopback, block, protect": {"iptables", "filter/ZG-INPUT", []string{
			`-i lo -m comment --comment "zguard:loopback" -j RETURN`,
			`-p tcp -m multiport --dports 8188,8888 -m comment --comment "zguard:block" -j DROP`,
			`-p tcp -m multiport --dports 8080 -m comment --comment "zguard:protect" -j ZG-GATE`,
			`-p udp -m multiport --dports 8188,8888 -m comment --comment "zguard:block" -j DROP`,
			`-p udp -m multiport --dports 8080 -m comment --comment "zguard:protect" -j ZG-GATE`,
		}},
		"forward: original port of DNATed connections": {"iptables", "filter/ZG-FORWARD", []string{
			`-p tcp -m conntrack --ctstate DNAT --ctorigdstport 8188 --ctdir ORIGINAL -m comment --comment "zguard:block" -j DROP`,
			`-p tcp -m conntrack --ctstate DNAT --ctorigdstport 8888 --ctdir ORIGINAL -m comment --comment "zguard:block" -j DROP`,
			`-p tcp -m conntrack --ctstate DNAT --ctorigdstport 8080 --ctdir ORIGINAL -m comment --comment "zguard:protect" -j ZG-GATE`,
			`-p udp -m conntrack --ctstate DNAT --ctorigdstport 8188 --ctdir ORIGINAL -m comment --comment "zguard:block" -j DROP`,
			`-p udp -m conntrack --ctstate DNAT --ctorigdstport 8888 --ctdir ORIGINAL -m comment --comment "zguard:block" -j DROP`,
			`-p udp -m conntrack --ctstate DNAT --ctorigdstport 8080 --ctdir ORIGINAL -m comment --comment "zguard:protect" -j ZG-GATE`,
		}},
	}
	for name, c := range cases {
		t.Run(name, func(t *testing.T) {
			if got := fn.chain(c.tool, c.key); !slices.Equal(got, c.want) && !(len(got) == 0 && len(c.want) == 0) {
				t.Errorf("%s %s =\n  %q\nwant\n  %q", c.tool, c.key, got, c.want)
			}
		})
	}
	st := fw.Status()
	if !st.InSync || !st.Protected || !st.LeakGuard.Active || !st.IPv6 || st.Backend != "iptables-nft" {
		t.Errorf("status = %+v", st)
	}
}

func TestNoopReconcileWritesNothing(t *testing.T) {
	fn := newFakeNet().withDocker()
	fw, _, _ := newFake(t, fn, "28.1.0")
	cfg := fakeConfig("203.0.113.7")
	for i := range 40 {
		cfg.Allow = append(cfg.Allow, netip.AddrFrom4([4]byte{198, 51, 100, byte(i)}).String())
	}
	if err := fw.Apply(context.Background(), cfg); err != nil {
		t.Fatal(err)
	}
	if !fw.Status().UsesSets {
		t.Fatal("41 entries over set_threshold 32 should use a set")
	}
	before := len(fn.calls)
	reconcileNow(t, fw, "timer")
	for _, c := range fn.calls[before:] {
		if isWrite(strings.Fields(c)[0], strings.Fields(c)[1:]) {
			t.Errorf("no-op reconcile wrote: %s", c)
		}
	}
	if st := fw.Status(); st.LastWrites != 0 || st.Repairs != 0 {
		t.Errorf("status after no-op: writes %d repairs %d", st.LastWrites, st.Repairs)
	}
}

func TestDriftIsRepaired(t *testing.T) {
	cases := map[string]func(ff *fakeFamily){
		"chain flushed (iptables -F ZG-INPUT)": func(ff *fakeFamily) { ff.chains["filter/ZG-INPUT"] = nil },
		"INPUT jump deleted": func(ff *fakeFamily) {
			ff.chains["filter/INPUT"] = slices.DeleteFunc(ff.chains["filter/INPUT"], func(r string) bool { return r == "-j ZG-INPUT" })
		},
		"rule inserted before zguard's jump": func(ff *fakeFamily) {
			ff.chains["filter/INPUT"] = append([]string{"-p tcp -j ACCEPT"}, ff.chains["filter/INPUT"]...)
		},
		"DOCKER-USER jump reordered": func(ff *fakeFamily) {
			ff.chains["filter/DOCKER-USER"] = []string{"-j RETURN", "-j ZG-FORWARD"}
		},
		"Docker's FORWARD jump removed (firewalld reload)": func(ff *fakeFamily) {
			ff.chains["filter/FORWARD"] = []string{"-o docker0 -j DOCKER"}
		},
		"gate rule tampered": func(ff *fakeFamily) {
			ff.chains["filter/ZG-GATE"] = []string{"-j RETURN"}
		},
		"raw guard jump deleted": func(ff *fakeFamily) { ff.chains["raw/PREROUTING"] = nil },
	}
	for name, tamper := range cases {
		t.Run(name, func(t *testing.T) {
			fn := newFakeNet().withDocker()
			fw, _, clock := newFake(t, fn, "20.10.24")
			if err := fw.Apply(context.Background(), fakeConfig("203.0.113.7")); err != nil {
				t.Fatal(err)
			}
			want := fn.snapshot()
			fn.edit("iptables", tamper)
			clock.t = clock.t.Add(10 * time.Second)
			reconcileNow(t, fw, "timer")
			got := fn.snapshot()
			if name == "Docker's FORWARD jump removed (firewalld reload)" {
				// zguard adds its own, marked jump instead of Docker's.
				if first := fn.chain("iptables", "filter/FORWARD")[0]; first != `-m comment --comment "zguard:ZG" -j DOCKER-USER` {
					t.Errorf("FORWARD starts with %q, want zguard's DOCKER-USER jump", first)
				}
			} else if name == "rule inserted before zguard's jump" {
				// The other tool's rule stays, behind zguard's jump.
				if in := fn.chain("iptables", "filter/INPUT"); !slices.Equal(in, []string{"-j ZG-INPUT", "-p tcp -j ACCEPT"}) {
					t.Errorf("INPUT = %q", in)
				}
			} else if got != want {
				t.Errorf("after repair:\n%s\nwant:\n%s", got, want)
			}
			st := fw.Status()
			if !st.InSync || st.Repairs != 1 || st.LastDrift == nil || !st.LastDrift.Time.Equal(clock.t) {
				t.Errorf("status = in_sync %v repairs %d drift %+v", st.InSync, st.Repairs, st.LastDrift)
			}
		})
	}
}

func TestDockerRestartMovesItsJumpFirst(t *testing.T) {
	fn := newFakeNet()
	fw, _, _ := newFake(t, fn, "20.10.24")
	if err := fw.Apply(context.Background(), fakeConfig("203.0.113.7")); err != nil {
		t.Fatal(err)
	}
	// Docker starts: it inserts its own FORWARD jump first.
	fn.edit("iptables", func(ff *fakeFamily) {
		ff.chains["filter/FORWARD"] = append([]string{"-j DOCKER-USER"}, ff.chains["filter/FORWARD"]...)
	})
	reconcileNow(t, fw, "docker start")
	if got := fn.chain("iptables", "filter/FORWARD"); !slices.Equal(got, []string{"-j DOCKER-USER"}) {
		t.Errorf("FORWARD = %q, want only Docker's jump (zguard's spare one removed)", got)
	}
}

func TestReloadChangesAllowlistAndCutsRevoked(t *testing.T) {
	fn := newFakeNet().withDocker()
	fw, ct, _ := newFake(t, fn, "28.0.0")
	ctx := context.Background()
	if err := fw.Apply(ctx, fakeConfig("203.0.113.7", "198.51.100.0/24")); err != nil {
		t.Fatal(err)
	}
	kept := flow{proto: 6, src: netip.MustParseAddr("198.51.100.9"), dst: netip.MustParseAddr("192.0.2.10"), dport: 8080}
	revoked := flow{proto: 6, src: netip.MustParseAddr("203.0.113.7"), dst: netip.MustParseAddr("192.0.2.10"), dport: 8080}
	ct.flows = []flow{kept, revoked}
	if err := fw.Apply(ctx, fakeConfig("198.51.100.0/24")); err != nil {
		t.Fatal(err)
	}
	if got := fn.chain("iptables", "filter/ZG-GATE"); got[0] != "-s 198.51.100.0/24 -j RETURN" || len(got) != 2 {
		t.Errorf("gate = %q", got)
	}
	if !slices.Equal(ct.cuts, []flow{revoked}) {
		t.Errorf("cut %v, want only the revoked flow", ct.cuts)
	}
	if st := fw.Status(); st.Repairs != 0 || st.LastDrift != nil || st.ConnectionsCut != 1 {
		t.Errorf("a reload is not drift: %+v", st)
	}
}

func TestInvalidApplyKeepsPrevious(t *testing.T) {
	fn := newFakeNet().withDocker()
	fw, _, _ := newFake(t, fn, "28.0.0")
	ctx := context.Background()
	if err := fw.Apply(ctx, fakeConfig("203.0.113.7")); err != nil {
		t.Fatal(err)
	}
	want := fn.snapshot()
	bad := map[string]config.Firewall{
		"bad address": fakeConfig("203.0.113.999"),
		"whole internet": func() config.Firewall {
			c := fakeConfig("0.0.0.0/0")
			return c
		}(),
		"port out of range": func() config.Firewall { c := fakeConfig(); c.BlockPorts = []int{70000}; return c }(),
		"bad prefix":        func() config.Firewall { c := fakeConfig(); c.ChainPrefix = "A B"; return c }(),
	}
	for name, cfg := range bad {
		t.Run(name, func(t *testing.T) {
			if err := fw.Apply(ctx, cfg); err == nil {
				t.Fatal("Apply accepted an invalid section")
			}
			if got := fn.snapshot(); got != want {
				t.Errorf("rules changed by a rejected Apply:\n%s", got)
			}
		})
	}
}

func TestBanExpiresAndCuts(t *testing.T) {
	fn := newFakeNet().withDocker()
	fw, ct, clock := newFake(t, fn, "28.0.0")
	ctx := context.Background()
	bad := netip.MustParseAddr("203.0.113.66")
	if err := fw.Ban(bad, time.Minute); err == nil {
		t.Fatal("Ban before Apply should fail")
	}
	if err := fw.Apply(ctx, fakeConfig("203.0.113.0/24")); err != nil {
		t.Fatal(err)
	}
	ct.flows = []flow{{proto: 6, src: bad, dst: netip.MustParseAddr("192.0.2.10"), dport: 8080}}
	if err := fw.Ban(bad, time.Minute); err != nil {
		t.Fatal(err)
	}
	gate := fn.chain("iptables", "filter/ZG-GATE")
	if want := fmt.Sprintf(`-s 203.0.113.66/32 -m comment --comment "zguard:ban:%d" -j DROP`, clock.t.Add(time.Minute).Unix()); gate[0] != want {
		t.Errorf("gate = %q, want the ban first (before the allowlist)", gate)
	}
	if len(ct.cuts) != 1 {
		t.Errorf("ban cut %d connections, want 1", len(ct.cuts))
	}
	st := fw.Status()
	if len(st.Banned) != 1 || st.Banned[0].Addr != bad.String() || !st.Banned[0].Until.Equal(clock.t.Add(time.Minute)) {
		t.Errorf("banned = %+v", st.Banned)
	}
	if d := fw.nextWake(); d > time.Minute+time.Second {
		t.Errorf("next wake %v, want by the ban's expiry", d)
	}
	// A restarted agent (new Firewall, same rules) keeps the ban.
	fw2, _, clock2 := newFake(t, fn, "28.0.0")
	clock2.t = clock.t.Add(30 * time.Second)
	if err := fw2.Apply(ctx, fakeConfig("203.0.113.0/24")); err != nil {
		t.Fatal(err)
	}
	if st := fw2.Status(); len(st.Banned) != 1 || !st.Banned[0].Until.Equal(clock.t.Add(time.Minute)) {
		t.Errorf("restarted agent lost the ban: %+v", st.Banned)
	}
	if fw2.Status().Drops["ban"] == 0 {
		t.Errorf("ban drops not counted under \"ban\": %v", fw2.Status().Drops)
	}

	clock.t = clock.t.Add(time.Minute)
	reconcileNow(t, fw, "timer")
	if gate := fn.chain("iptables", "filter/ZG-GATE"); strings.Contains(strings.Join(gate, "\n"), "zguard:ban") {
		t.Errorf("expired ban still installed: %q", gate)
	}
	if st := fw.Status(); len(st.Banned) != 0 || st.Repairs != 0 {
		t.Errorf("after expiry: banned %v repairs %d (an expiry is not drift)", st.Banned, st.Repairs)
	}
	for name, a := range map[string]netip.Addr{"loopback": netip.MustParseAddr("127.0.0.1"), "invalid": {}} {
		if err := fw.Ban(a, time.Minute); err == nil {
			t.Errorf("Ban(%s) accepted", name)
		}
	}
}

func TestDisableAndCleanupRestoreEverything(t *testing.T) {
	cases := map[string]*fakeNet{
		"docker running":     newFakeNet().withDocker(),
		"docker not started": newFakeNet(),
	}
	for name, fn := range cases {
		t.Run(name, func(t *testing.T) {
			before := fn.snapshot()
			fw, _, _ := newFake(t, fn, "20.10.24")
			cfg := fakeConfig("203.0.113.7")
			for i := range 40 { // sets as well
				cfg.Allow = append(cfg.Allow, netip.AddrFrom4([4]byte{10, 0, 0, byte(i)}).String())
			}
			ctx := context.Background()
			if err := fw.Apply(ctx, cfg); err != nil {
				t.Fatal(err)
			}
			if fn.snapshot() == before {
				t.Fatal("Apply changed nothing")
			}
			cfg.Enabled = false
			if err := fw.Apply(ctx, cfg); err != nil {
				t.Fatal(err)
			}
			if got := fn.snapshot(); got != before {
				t.Errorf("after disable:\n%s\nwant:\n%s", got, before)
			}
			if len(fw.Status().Findings()) != 0 {
				t.Errorf("disabled firewall has findings: %v", fw.Status().Findings())
			}
			if err := cleanup(ctx, fn, "ZG", testLogger(t)); err != nil {
				t.Errorf("second cleanup: %v", err)
			}
		})
	}
}

func TestPrefixChangeRemovesOldChains(t *testing.T) {
	fn := newFakeNet().withDocker()
	fw, _, _ := newFake(t, fn, "28.0.0")
	ctx := context.Background()
	cfg := fakeConfig("203.0.113.7")
	if err := fw.Apply(ctx, cfg); err != nil {
		t.Fatal(err)
	}
	cfg.ChainPrefix = "ZG2"
	if err := fw.Apply(ctx, cfg); err != nil {
		t.Fatal(err)
	}
	snap := fn.snapshot()
	if strings.Contains(snap, "ZG-") || !strings.Contains(snap, "ZG2-INPUT") {
		t.Errorf("after prefix change:\n%s", snap)
	}
}

func TestUnsafeHostsAreReported(t *testing.T) {
	fn := newFakeNet().withDocker()
	fn.nftList = "table ip filter\ntable ip docker-bridges\n"
	fw, _, _ := newFake(t, fn, "29.0.0")
	if err := fw.Apply(context.Background(), fakeConfig("203.0.113.7")); err != nil {
		t.Fatal(err)
	}
	st := fw.Status()
	if st.Protected || !st.DockerNftables {
		t.Errorf("status = %+v, want not protected", st)
	}
	if health.Worst(st.Findings()) != health.Critical {
		t.Errorf("findings = %v, want CRITICAL", st.Findings())
	}
}

func TestFindings(t *testing.T) {
	cases := map[string]struct {
		st   Status
		want health.Level
	}{
		"disabled":        {Status{Enabled: false}, health.OK},
		"in sync":         {Status{Enabled: true, InSync: true, Protected: true, Backend: "iptables-nft"}, health.OK},
		"out of sync":     {Status{Enabled: true, InSync: false, Backend: "iptables-nft"}, health.Critical},
		"mixed backends":  {Status{Enabled: true, InSync: true, Backend: "iptables-nft", Mixed: "rules in both"}, health.Critical},
		"apply error":     {Status{Enabled: true, Error: "boom", Backend: "iptables-nft"}, health.Critical},
		"unknown backend": {Status{Enabled: true, InSync: true, Protected: true}, health.Warning},
		"docker nftables": {Status{Enabled: true, InSync: true, DockerNftables: true, Backend: "iptables-nft"}, health.Critical},
	}
	for name, c := range cases {
		t.Run(name, func(t *testing.T) {
			if got := health.Worst(c.st.Findings()); got != c.want {
				t.Errorf("worst = %v, want %v (%v)", got, c.want, c.st.Findings())
			}
		})
	}
}

func TestNoIPv6Host(t *testing.T) {
	fn := newFakeNet().withDocker()
	fn.noIPv6 = true
	fw, _, _ := newFake(t, fn, "28.0.0")
	if err := fw.Apply(context.Background(), fakeConfig("203.0.113.7", "2001:db8::/48")); err != nil {
		t.Fatalf("auto IPv6 on a host without it: %v", err)
	}
	if fw.Status().IPv6 {
		t.Error("status says IPv6 on a host without ip6tables")
	}
	cfg := fakeConfig("203.0.113.7")
	cfg.IPv6 = "on"
	if err := fw.Apply(context.Background(), cfg); err == nil {
		t.Error(`ipv6 = "on" without ip6tables should fail`)
	}
}

// missingTools is a host without iptables or ipset.
type missingTools struct{}

func (missingTools) run(_ context.Context, _ []byte, name string, _ ...string) ([]byte, error) {
	return nil, fmt.Errorf("%s: %w", name, exec.ErrNotFound)
}

func TestDisabledOnHostWithoutIptables(t *testing.T) {
	fw := New(Deps{Log: testLogger(t), cmd: missingTools{}, ct: &fakeConntrack{}})
	cfg := fakeConfig()
	cfg.Enabled = false
	if err := fw.Apply(context.Background(), cfg); err != nil {
		t.Errorf("disabled firewall on a host without iptables: %v", err)
	}
	cfg.Enabled = true
	if err := fw.Apply(context.Background(), cfg); err == nil {
		t.Error("enabled firewall on a host without iptables should fail")
	} else if st := fw.Status(); health.Worst(st.Findings()) != health.Critical {
		t.Errorf("findings %v, want CRITICAL", st.Findings())
	}
}

// TestSetTamperingIsFound: a set whose entry count changes is repaired at
// the next reconcile; one entry swapped for another (same count) within
// fullCheckEvery reconciles.
func TestSetTamperingIsFound(t *testing.T) {
	fn := newFakeNet().withDocker()
	fw, _, _ := newFake(t, fn, "28.0.0")
	cfg := fakeConfig()
	for i := range 40 {
		cfg.Allow = append(cfg.Allow, netip.AddrFrom4([4]byte{10, 0, 0, byte(i)}).String()+"/32")
	}
	if err := fw.Apply(context.Background(), cfg); err != nil {
		t.Fatal(err)
	}
	want := fn.snapshot()
	cases := map[string]struct {
		tamper func(set []string) []string
		within int
	}{
		"entry deleted": {func(s []string) []string { return s[1:] }, 1},
		"entry swapped": {func(s []string) []string { s = slices.Clone(s); s[0] = "192.0.2.99/32"; return s }, fullCheckEvery},
	}
	for name, c := range cases {
		t.Run(name, func(t *testing.T) {
			fn.mu.Lock()
			fn.sets["ZG-allow4"] = c.tamper(fn.sets["ZG-allow4"])
			fn.mu.Unlock()
			for i := 0; i < c.within && fn.snapshot() != want; i++ {
				reconcileNow(t, fw, "timer")
			}
			if fn.snapshot() != want {
				t.Errorf("set not repaired within %d reconciles", c.within)
			}
		})
	}
}
