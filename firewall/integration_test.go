package firewall

import (
	"context"
	"strings"
	"sync/atomic"

	"net/netip"
	"testing"
	"time"

	"github.com/zguard/zguard/config"
	"github.com/zguard/zguard/internal/testenv"
)

const (
	protectedPort = 18080
	blockedPort   = 18188
	openPort      = 18022
)

func testConfig(t testing.TB, allow ...string) config.Firewall {
	cfg := config.Defaults().Firewall
	cfg.Allow = allow
	cfg.ProtectPorts = []int{protectedPort}
	cfg.BlockPorts = []int{blockedPort}
	cfg.ChainPrefix = testenv.UniqueName("ZT")
	cfg.IPv6 = "on"
	return cfg
}

// newInTopo returns a firewall acting on the topology's server namespace.
func newInTopo(t testing.TB, tp *topo) *Firewall {
	return New(Deps{
		Log:           testLogger(t),
		EngineVersion: func() string { return "28.0.0" },
		cmd:           tp.cmd,
		ct:            netlinkIn(t, tp.server),
	})
}

func TestAllowlistReachability(t *testing.T) {
	tp := newTopo(t)
	for _, p := range []int{protectedPort, blockedPort, openPort} {
		tp.listen(t, p)
	}
	before4, before6 := tp.save(t, "iptables-save"), tp.save(t, "ip6tables-save")
	fw := newInTopo(t, tp)
	cfg := testConfig(t, allowedV4.String(), "2001:db8:1::/48")
	ctx := context.Background()
	if err := fw.Apply(ctx, cfg); err != nil {
		t.Fatalf("Apply: %v", err)
	}
	t.Cleanup(func() { _ = cleanup(context.Background(), tp.cmd, cfg.ChainPrefix, testLogger(t)) })

	cases := map[string]struct {
		ns   string
		addr netip.Addr
		port int
		want bool
	}{
		"allowed v4 reaches protected":  {tp.allowed, serverV4A, protectedPort, true},
		"allowed v6 reaches protected":  {tp.allowed, serverV6A, protectedPort, true},
		"denied v4 dropped":             {tp.denied, serverV4D, protectedPort, false},
		"denied v6 dropped":             {tp.denied, serverV6D, protectedPort, false},
		"allowed v4 blocked port":       {tp.allowed, serverV4A, blockedPort, false},
		"allowed v6 blocked port":       {tp.allowed, serverV6A, blockedPort, false},
		"denied reaches unrelated port": {tp.denied, serverV4D, openPort, true},
		"loopback protected":            {tp.server, netip.MustParseAddr("127.0.0.1"), protectedPort, true},
		"loopback blocked":              {tp.server, netip.MustParseAddr("127.0.0.1"), blockedPort, true},
		"loopback v6 blocked":           {tp.server, netip.IPv6Loopback(), blockedPort, true},
	}
	for name, c := range cases {
		t.Run(name, func(t *testing.T) {
			if got := reach(t, c.ns, c.addr, c.port); got != c.want {
				t.Errorf("reach %s:%d from %s = %v, want %v", c.addr, c.port, c.ns, got, c.want)
			}
		})
	}

	st := fw.Status()
	if !st.InSync || !st.IPv6 || st.Backend == "" {
		t.Errorf("status = %+v, want in sync with IPv6 and a backend", st)
	}

	// A second apply of the same section must not write anything.
	if err := fw.Apply(ctx, cfg); err != nil {
		t.Fatal(err)
	}
	if w := fw.Status().LastWrites; w != 0 {
		t.Errorf("no-op apply made %d writes, want 0", w)
	}
	fw.mu.Lock()
	err := fw.reconcileLocked(ctx, "timer", false)
	fw.mu.Unlock()
	if err != nil {
		t.Fatal(err)
	}
	if st := fw.Status(); st.DroppedPackets == 0 || st.Drops["deny"] == 0 || st.Drops["block"] == 0 {
		t.Errorf("drop counters = %v (total %d), want deny and block counted", st.Drops, st.DroppedPackets)
	}

	// Cleanup restores the namespace's rules byte for byte (minus counters).
	for range 2 {
		if err := cleanup(ctx, tp.cmd, cfg.ChainPrefix, testLogger(t)); err != nil {
			t.Fatalf("cleanup: %v", err)
		}
	}
	if after := tp.save(t, "iptables-save"); after != before4 {
		t.Errorf("iptables-save after cleanup:\n%s\nwant:\n%s", after, before4)
	}
	if after := tp.save(t, "ip6tables-save"); after != before6 {
		t.Errorf("ip6tables-save after cleanup:\n%s\nwant:\n%s", after, before6)
	}
}

// TestRevocationCutsOpenConnection: removing an address from the allowlist
// stops its established connection within a second.
func TestRevocationCutsOpenConnection(t *testing.T) {
	tp := newTopo(t)
	tp.listen(t, protectedPort)
	fw := newInTopo(t, tp)
	cfg := testConfig(t, allowedV4.String())
	ctx := context.Background()
	if err := fw.Apply(ctx, cfg); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cleanup(context.Background(), tp.cmd, cfg.ChainPrefix, testLogger(t)) })

	latency := revoke(t, tp, func() {
		cfg.Allow = []string{"192.0.2.1"}
		if err := fw.Apply(ctx, cfg); err != nil {
			t.Fatal(err)
		}
	})
	t.Logf("revocation latency (last byte after the reload began): %v", latency)
	if latency > time.Second {
		t.Errorf("connection got data %v after revocation, want under 1s", latency)
	}
}

// revoke opens a streaming connection from the allowed client, runs do,
// and returns how long after do began the last byte arrived. It fails the
// test if data still flows two seconds later.
func revoke(t testing.TB, tp *topo, do func()) time.Duration {
	t.Helper()
	c, err := dial(t, tp.allowed, serverV4A, protectedPort, time.Second)
	if err != nil {
		t.Fatalf("allowed client cannot connect: %v", err)
	}
	defer c.Close()
	last := make(chan time.Time, 1)
	go func() {
		buf := make([]byte, 64*1024)
		var at time.Time
		for {
			c.SetReadDeadline(time.Now().Add(2 * time.Second))
			if _, err := c.Read(buf); err != nil {
				last <- at
				return
			}
			at = time.Now()
		}
	}()
	time.Sleep(100 * time.Millisecond)
	start := time.Now()
	do()
	select {
	case at := <-last:
		return max(at.Sub(start), 0)
	case <-time.After(4 * time.Second):
		t.Fatal("connection still receives data 4s after revocation")
	}
	return 0
}

// TestReloadsNeverOpenAWindow alternates two allowlists (one small, as
// rules; one large, as an ipset) 100 times while clients probe
// continuously: the denied client must never connect, the allowed one
// never be refused or slowed by a dropped SYN, and its open connection
// must survive every reload.
func TestReloadsNeverOpenAWindow(t *testing.T) {
	tp := newTopo(t)
	tp.listen(t, protectedPort)
	fw := newInTopo(t, tp)
	small := testConfig(t, allowedV4.String(), allowedV6.String(), "192.0.2.1")
	large := small
	large.Allow = []string{allowedV4.String(), allowedV6.String()}
	for i := range 200 {
		large.Allow = append(large.Allow, netip.AddrFrom4([4]byte{192, 0, 2, byte(i)}).String())
	}
	ctx := context.Background()
	if err := fw.Apply(ctx, small); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cleanup(context.Background(), tp.cmd, small.ChainPrefix, testLogger(t)) })

	stream, err := dial(t, tp.allowed, serverV4A, protectedPort, time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer stream.Close()
	streamErr := make(chan error, 1)
	var maxGap atomic.Int64
	go func() {
		buf := make([]byte, 64*1024)
		last := time.Now()
		for {
			stream.SetReadDeadline(time.Now().Add(3 * time.Second))
			if _, err := stream.Read(buf); err != nil {
				streamErr <- err
				return
			}
			if gap := time.Since(last); gap > time.Duration(maxGap.Load()) {
				maxGap.Store(int64(gap))
			}
			last = time.Now()
		}
	}()

	stop := make(chan struct{})
	type result struct{ tries, wrong int }
	probe := func(ns string, addr netip.Addr, wantOK bool, out chan<- result) {
		var r result
		for {
			select {
			case <-stop:
				out <- r
				return
			default:
			}
			r.tries++
			start := time.Now()
			timeout := 100 * time.Millisecond // an accepted SYN is answered in well under 1ms
			if wantOK {
				timeout = 3 * time.Second
			}
			c, err := dial(t, ns, addr, protectedPort, timeout)
			ok := err == nil
			if ok {
				c.Close()
			}
			// A dropped SYN is retransmitted after 1s: a connect that slow
			// is a window even if it then succeeded.
			if ok != wantOK || (wantOK && time.Since(start) > 900*time.Millisecond) {
				r.wrong++
				t.Logf("probe from %s: ok=%v after %v (%v)", ns, ok, time.Since(start), err)
			}
			time.Sleep(5 * time.Millisecond)
		}
	}
	allowedRes, deniedRes, denied6Res := make(chan result, 1), make(chan result, 1), make(chan result, 1)
	go probe(tp.allowed, serverV4A, true, allowedRes)
	go probe(tp.denied, serverV4D, false, deniedRes)
	go probe(tp.denied, serverV6D, false, denied6Res)

	for i := range 100 {
		cfg := small
		if i%2 == 0 {
			cfg = large
		}
		if err := fw.Apply(ctx, cfg); err != nil {
			t.Fatalf("reload %d: %v", i, err)
		}
		if !fw.Status().InSync {
			t.Fatalf("reload %d: not in sync: %+v", i, fw.Status())
		}
	}
	close(stop)
	a, d, d6 := <-allowedRes, <-deniedRes, <-denied6Res
	t.Logf("probes: allowed %d tries %d wrong; denied v4 %d tries %d wrong; denied v6 %d tries %d wrong", a.tries, a.wrong, d.tries, d.wrong, d6.tries, d6.wrong)
	if a.wrong+d.wrong+d6.wrong > 0 || a.tries == 0 || d.tries == 0 {
		t.Errorf("wrong outcomes during reloads: allowed %d/%d, denied %d/%d, denied v6 %d/%d", a.wrong, a.tries, d.wrong, d.tries, d6.wrong, d6.tries)
	}
	select {
	case err := <-streamErr:
		t.Errorf("allowed client's open connection broke during reloads: %v", err)
	default:
	}
	t.Logf("open connection: longest pause between reads %v", time.Duration(maxGap.Load()))
}

// TestSelfRepair: another tool flushes zguard's chain or deletes its jump;
// Run puts them back within one interval.
func TestSelfRepair(t *testing.T) {
	tp := newTopo(t)
	tp.listen(t, protectedPort)
	fw := newInTopo(t, tp)
	cfg := testConfig(t, allowedV4.String())
	cfg.ReconcileInterval = config.Duration(200 * time.Millisecond)
	ctx, cancel := context.WithCancel(context.Background())
	if err := fw.Apply(ctx, cfg); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cleanup(context.Background(), tp.cmd, cfg.ChainPrefix, testLogger(t)) })
	done := make(chan error, 1)
	go func() { done <- fw.Run(ctx) }()
	defer func() {
		cancel()
		<-done
		// Run ending must not remove anything: fail closed.
		if out := tp.save(t, "iptables-save"); !strings.Contains(out, "-A INPUT -j "+cfg.ChainPrefix+"-INPUT") {
			t.Errorf("rules gone after Run returned:\n%s", out)
		}
	}()

	n := namesFor(cfg.ChainPrefix)
	first := func(save, chain string) string {
		for l := range strings.Lines(save) {
			if strings.HasPrefix(l, "-A "+chain+" ") {
				return strings.TrimSpace(l)
			}
		}
		return ""
	}
	cases := []struct {
		name     string
		tamper   []string
		repaired func(v4, v6 string) bool
	}{
		{"iptables -F chain", []string{"iptables", "-F", n.input},
			func(v4, _ string) bool { return strings.Contains(v4, "-A "+n.input+" -i lo") }},
		{"jump deleted", []string{"iptables", "-D", "INPUT", "-j", n.input},
			func(v4, _ string) bool { return first(v4, "INPUT") == "-A INPUT -j "+n.input }},
		{"ip6tables -F gate", []string{"ip6tables", "-F", n.gate},
			func(_, v6 string) bool {
				return strings.Contains(v6, "-A "+n.gate+` -m comment --comment "zguard:deny" -j DROP`)
			}},
		{"rule inserted first", []string{"iptables", "-I", "INPUT", "1", "-p", "tcp", "-j", "ACCEPT"},
			func(v4, _ string) bool { return first(v4, "INPUT") == "-A INPUT -j "+n.input }},
		{"whole table flushed", []string{"iptables", "-F"},
			func(v4, _ string) bool {
				return first(v4, "INPUT") == "-A INPUT -j "+n.input && first(v4, n.gate) != "" && first(v4, "DOCKER-USER") == "-A DOCKER-USER -j "+n.forward
			}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			repairs := fw.Status().Repairs
			if _, err := tp.cmd.run(ctx, nil, c.tamper[0], c.tamper[1:]...); err != nil {
				t.Fatal(err)
			}
			start := time.Now()
			for time.Since(start) < 2*time.Second && !c.repaired(tp.save(t, "iptables-save"), tp.save(t, "ip6tables-save")) {
				time.Sleep(20 * time.Millisecond)
			}
			took := time.Since(start)
			if !c.repaired(tp.save(t, "iptables-save"), tp.save(t, "ip6tables-save")) {
				t.Fatalf("not repaired within 2s (interval 200ms): %+v", fw.Status())
			}
			t.Logf("repaired after %v", took)
			// The rules are back before the reconcile that put them back
			// has updated the status; give it a moment.
			deadline := time.Now().Add(time.Second)
			for fw.Status().Repairs <= repairs && time.Now().Before(deadline) {
				time.Sleep(10 * time.Millisecond)
			}
			if st := fw.Status(); st.Repairs <= repairs || st.LastDrift == nil {
				t.Errorf("repair not reported: repairs %d -> %d, last drift %+v", repairs, st.Repairs, st.LastDrift)
			}
			if reach(t, tp.denied, serverV4D, protectedPort) {
				t.Error("denied client reaches the protected port after repair")
			}
			if !reach(t, tp.allowed, serverV4A, protectedPort) {
				t.Error("allowed client cannot reach the protected port after repair")
			}
		})
	}
}

// TestLargeAllowlist: 10,000 entries go into an ipset; the allowed client
// still connects, the denied one does not, and a no-op reconcile writes
// nothing and stays under 50ms.
func TestLargeAllowlist(t *testing.T) {
	testenv.Require(t, testenv.Ipset)
	tp := newTopo(t)
	tp.listen(t, protectedPort)
	fw := newInTopo(t, tp)
	cfg := testConfig(t, allowedV4.String(), allowedV6.String())
	for i := range 10000 {
		cfg.Allow = append(cfg.Allow, netip.AddrFrom4([4]byte{10, byte(i >> 8), byte(i), 1}).String())
	}
	ctx := context.Background()
	start := time.Now()
	if err := fw.Apply(ctx, cfg); err != nil {
		t.Fatal(err)
	}
	t.Logf("apply of %d entries: %v, %d tool calls", len(cfg.Allow), time.Since(start), fw.cmd.calls)
	t.Cleanup(func() { _ = cleanup(context.Background(), tp.cmd, cfg.ChainPrefix, testLogger(t)) })
	if !fw.Status().UsesSets {
		t.Fatal("10,000 entries not in a set")
	}
	if !reach(t, tp.allowed, serverV4A, protectedPort) || !reach(t, tp.allowed, serverV6A, protectedPort) {
		t.Error("allowed client cannot connect")
	}
	if reach(t, tp.denied, serverV4D, protectedPort) {
		t.Error("denied client connects")
	}
	fw.mu.Lock()
	start = time.Now()
	err := fw.reconcileLocked(ctx, "timer", false)
	took := time.Since(start)
	fw.mu.Unlock()
	if err != nil {
		t.Fatal(err)
	}
	st := fw.Status()
	t.Logf("no-op reconcile: %v, %d writes", took, st.LastWrites)
	if st.LastWrites != 0 || st.Repairs != 0 {
		t.Errorf("no-op reconcile wrote %d times (repairs %d)", st.LastWrites, st.Repairs)
	}
	// Its time (goal < 50 ms) is measured by bench/firewall.sh, not
	// asserted here: a shared 2-core CI box makes wall-clock bounds flaky.
}

// TestBanCutsAndExpires bans the allowed client: its open connection stops
// at once; after Unban it connects again.
func TestBanCutsAndExpires(t *testing.T) {
	tp := newTopo(t)
	tp.listen(t, protectedPort)
	fw := newInTopo(t, tp)
	cfg := testConfig(t, allowedV4.String())
	if err := fw.Apply(context.Background(), cfg); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cleanup(context.Background(), tp.cmd, cfg.ChainPrefix, testLogger(t)) })
	latency := revoke(t, tp, func() {
		if err := fw.Ban(allowedV4, time.Hour); err != nil {
			t.Fatal(err)
		}
	})
	t.Logf("ban latency: %v", latency)
	if latency > time.Second {
		t.Errorf("banned connection got data for %v", latency)
	}
	if reach(t, tp.allowed, serverV4A, protectedPort) {
		t.Error("banned client connects")
	}
	if st := fw.Status(); len(st.Banned) != 1 || st.Banned[0].Addr != allowedV4.String() {
		t.Errorf("banned = %+v", st.Banned)
	}
	if err := fw.Unban(allowedV4); err != nil {
		t.Fatal(err)
	}
	if !reach(t, tp.allowed, serverV4A, protectedPort) {
		t.Error("unbanned client cannot connect")
	}
}

// TestLoopbackLeakGuard reproduces moby#45610 in the topology: with
// route_localnet on (Docker sets it for its loopback publications), a
// neighbour routes packets for 127.0.0.1 at the host and reaches a port
// that is only meant for loopback. On engines before 28 the raw-table
// guard drops them; local clients keep working.
func TestLoopbackLeakGuard(t *testing.T) {
	tp := newTopo(t)
	tp.listen(t, openPort)
	// 127.0.0.2: the client's own 127.0.0.1 stays local to it.
	loop := netip.MustParseAddr("127.0.0.2")
	sh(t, "ip", "netns", "exec", tp.server, "sysctl", "-qw", "net.ipv4.conf.ea.route_localnet=1")
	sh(t, "ip", "netns", "exec", tp.allowed, "sysctl", "-qw", "net.ipv4.conf.eth0.route_localnet=1")
	sh(t, "ip", "-n", tp.allowed, "route", "del", "local", "127.0.0.0/8", "dev", "lo", "table", "local")
	sh(t, "ip", "-n", tp.allowed, "route", "add", "127.0.0.2/32", "via", serverV4A.String(), "dev", "eth0")
	if !reach(t, tp.allowed, loop, openPort) {
		t.Fatal("could not reproduce the leak: the neighbour does not reach 127.0.0.2 without zguard")
	}

	fw := New(Deps{
		Log:            testLogger(t),
		EngineVersion:  func() string { return "20.10.24" },
		PublishedPorts: func() []int { return []int{openPort} },
		cmd:            tp.cmd,
		ct:             netlinkIn(t, tp.server),
	})
	cfg := testConfig(t, allowedV4.String())
	ctx := context.Background()
	if err := fw.Apply(ctx, cfg); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cleanup(context.Background(), tp.cmd, cfg.ChainPrefix, testLogger(t)) })
	if reach(t, tp.allowed, loop, openPort) {
		t.Error("neighbour still reaches 127.0.0.2 with the leak guard on")
	}
	if !reach(t, tp.server, loop, openPort) {
		t.Error("local client cannot reach 127.0.0.2")
	}
	reconcileNow(t, fw, "timer")
	if st := fw.Status(); !st.LeakGuard.Active || st.Drops["leak-guard"] == 0 {
		t.Errorf("leak guard status %+v, drops %v", st.LeakGuard, st.Drops)
	}

	// Engine 28 brings its own guard: zguard's goes away on the next apply.
	fw.engine = func() string { return "28.0.1" }
	if err := fw.Apply(ctx, cfg); err != nil {
		t.Fatal(err)
	}
	if out := tp.save(t, "iptables-save"); strings.Contains(out, cfg.ChainPrefix+"-RAW") {
		t.Errorf("leak guard left on engine 28:\n%s", out)
	}
}
