package firewall

import (
	"context"

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
