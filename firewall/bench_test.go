package firewall

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"runtime"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/coreos/go-iptables/iptables"
	"github.com/zguard/zguard/config"
	"github.com/zguard/zguard/internal/testenv"
)

// TestBenchFirewall measures what bench/firewall.sh reports (run it with
// ZGUARD_BENCH=1): apply time and tool invocations for allowlists of 10,
// 1,000 and 10,000 entries, zguard against the usual one rule per CIDR
// with go-iptables Append; a no-op reconcile; the per-packet cost of a
// long rule list against an ipset; and revocation latency. Everything runs
// in throwaway network namespaces.
func TestBenchFirewall(t *testing.T) {
	if os.Getenv("ZGUARD_BENCH") != "1" {
		t.Skip("benchmark; run bench/firewall.sh (ZGUARD_BENCH=1)")
	}
	anchorBudget := 90 * time.Second
	if v := os.Getenv("ZGUARD_BENCH_ANCHOR_BUDGET"); v != "" {
		if d, err := time.ParseDuration(v); err == nil {
			anchorBudget = d
		}
	}
	tp := newTopo(t)
	tp.listen(t, protectedPort)
	sinkPort := protectedPort + 1
	received := tp.sink(t, sinkPort)
	// Segments are sent one by one, without offloads merging them, so the
	// rate reflects per-packet work.
	sh(t, "ip", "-n", tp.allowed, "link", "set", "dev", "eth0", "gso_max_segs", "1")
	ctx := context.Background()

	entries := func(n int) []string {
		out := []string{allowedV4.String()}
		for i := 1; i < n; i++ {
			out = append(out, netip.AddrFrom4([4]byte{10, byte(i >> 16), byte(i >> 8), byte(i)}).String())
		}
		return out
	}

	version, _ := tp.cmd.run(ctx, nil, "iptables", "--version")
	fmt.Printf("\nApply an allowlist (fresh namespace each row; %s)\n", strings.TrimSpace(string(version)))
	fmt.Printf("%-8s | %-28s | %-28s | %-34s\n", "entries", "zguard (auto: set > 32)", "zguard (forced rules)", "anchor: go-iptables Append/CIDR")
	fmt.Printf("%-8s | %-28s | %-28s | %-34s\n", "", "time / tool calls", "time / tool calls", "time / iptables calls")
	for _, n := range []int{10, 1000, 10000} {
		auto := measureApply(t, n, 32, entries(n))
		forced := measureApply(t, n, 0, entries(n))
		anchor := measureAnchor(t, entries(n), anchorBudget)
		fmt.Printf("%-8d | %-28s | %-28s | %-34s\n", n, auto, forced, anchor)
	}

	// No-op reconcile and per-packet cost, on the topology.
	var perPacket []string
	fmt.Printf("\nNo-op reconcile (nothing changed; goal: 0 writes, < 50 ms)\n")
	fmt.Printf("%-8s | %-12s | %-14s | %-10s\n", "entries", "mode", "time (median)", "writes")
	for _, n := range []int{10, 1000, 10000} {
		for _, thr := range []int{32, 0} {
			if n == 10 && thr == 0 {
				continue
			}
			fw := newQuiet(t, tp)
			cfg := testConfig(t, entries(n)...)
			cfg.SetThreshold = thr
			cfg.ProtectPorts = []int{protectedPort, sinkPort}
			if err := fw.Apply(ctx, cfg); err != nil {
				t.Fatal(err)
			}
			var times []time.Duration
			writes := 0
			for range 7 {
				fw.mu.Lock()
				start := time.Now()
				err := fw.reconcileLocked(ctx, "timer", false)
				times = append(times, time.Since(start))
				fw.mu.Unlock()
				if err != nil {
					t.Fatal(err)
				}
				writes += fw.Status().LastWrites
			}
			mode := "rules"
			if fw.Status().UsesSets {
				mode = "ipset"
			}
			fmt.Printf("%-8d | %-12s | %-14s | %-10d\n", n, mode, median(times).Round(100*time.Microsecond), writes)

			if n >= 1000 {
				rate := uploadRate(t, tp, sinkPort, received)
				perPacket = append(perPacket, fmt.Sprintf("%-8d | %-12s | %.1f MB/s", n, mode, rate))
			}
			_ = cleanup(ctx, tp.cmd, cfg.ChainPrefix, quietLogger())
		}
	}
	fw := newQuiet(t, tp)
	cfg := testConfig(t, allowedV4.String())
	cfg.ProtectPorts = []int{protectedPort, sinkPort}
	if err := fw.Apply(ctx, cfg); err != nil {
		t.Fatal(err)
	}
	base := uploadRate(t, tp, sinkPort, received)
	_ = cleanup(ctx, tp.cmd, cfg.ChainPrefix, quietLogger())
	fmt.Printf("\nPer-packet cost: upload from the allowed client, matched by the LAST entry; one segment per packet (gso_max_segs 1); best of 3 x 0.5 s\n")
	fmt.Printf("%-8s | %-12s | %s\n", "entries", "mode", "throughput")
	fmt.Printf("%-8d | %-12s | %.1f MB/s\n", 1, "rules", base)
	for _, l := range perPacket {
		fmt.Println(l)
	}

	fmt.Printf("\nRevocation latency (streaming connection; last byte received after the call began)\n")
	fmt.Printf("%-34s | %s\n", "action", "latency (3 runs)")
	for _, what := range []string{"reload without the address", "Ban(address)"} {
		var lat []string
		for range 3 {
			fw := newQuiet(t, tp)
			cfg := testConfig(t, allowedV4.String())
			if err := fw.Apply(ctx, cfg); err != nil {
				t.Fatal(err)
			}
			l := revoke(t, tp, func() {
				if what == "Ban(address)" {
					if err := fw.Ban(allowedV4, time.Hour); err != nil {
						t.Fatal(err)
					}
					return
				}
				cfg.Allow = []string{"192.0.2.1"}
				if err := fw.Apply(ctx, cfg); err != nil {
					t.Fatal(err)
				}
			})
			lat = append(lat, l.Round(time.Millisecond).String())
			_ = cleanup(ctx, tp.cmd, cfg.ChainPrefix, quietLogger())
		}
		fmt.Printf("%-34s | %s\n", what, strings.Join(lat, ", "))
	}
}

// measureApply applies n entries in a fresh namespace.
func measureApply(t *testing.T, n, threshold int, allow []string) string {
	ns := strings.ToLower(testenv.UniqueName("zb"))
	sh(t, "ip", "netns", "add", ns)
	defer func() { sh(t, "ip", "netns", "del", ns) }()
	fw := New(Deps{Log: quietLogger(), EngineVersion: func() string { return "28.0.0" }, cmd: execCommander{netns: ns}, ct: netlinkIn(t, ns)})
	cfg := config.Defaults().Firewall
	cfg.Allow, cfg.ProtectPorts, cfg.BlockPorts = allow, []int{8080}, []int{8188}
	cfg.ChainPrefix, cfg.SetThreshold, cfg.IPv6 = "ZB", threshold, "off"
	start := time.Now()
	if err := fw.Apply(context.Background(), cfg); err != nil {
		t.Fatalf("apply %d: %v", n, err)
	}
	return fmt.Sprintf("%v / %d", time.Since(start).Round(time.Millisecond), fw.cmd.calls)
}

// measureAnchor appends one rule per entry with go-iptables, inside a
// fresh namespace, within budget; past it the rest is extrapolated.
func measureAnchor(t *testing.T, allow []string, budget time.Duration) string {
	ns := strings.ToLower(testenv.UniqueName("zb"))
	sh(t, "ip", "netns", "add", ns)
	defer func() { sh(t, "ip", "netns", "del", ns) }()
	var res string
	inNetns(t, ns, func() {
		// go-iptables forks iptables from this locked thread, so the
		// child runs in the namespace.
		runtime.LockOSThread()
		start := time.Now()
		ipt, err := iptables.New()
		if err != nil {
			res = err.Error()
			return
		}
		calls := 1
		if err := ipt.NewChain("filter", "ANCHOR"); err != nil {
			res = err.Error()
			return
		}
		calls++
		for i, a := range allow {
			if time.Since(start) > budget {
				el := time.Since(start)
				res = fmt.Sprintf("%d done in %v; ~%v / %d (extrapolated)", i, el.Round(time.Second),
					(el * time.Duration(len(allow)) / time.Duration(i)).Round(time.Second), calls+len(allow)-i)
				return
			}
			if err := ipt.Append("filter", "ANCHOR", "-s", a, "-j", "RETURN"); err != nil {
				res = err.Error()
				return
			}
			calls++
		}
		res = fmt.Sprintf("%v / %d", time.Since(start).Round(time.Millisecond), calls)
	})
	return res
}

// uploadRate sends from the allowed client to the sink and returns the
// best rate the sink received, in MB/s. Every segment passes the
// firewall's INPUT rules, so the rate falls as per-packet cost grows.
func uploadRate(t *testing.T, tp *topo, port int, received *atomic.Int64) float64 {
	best := 0.0
	for range 3 { // best of three: the test box is shared
		best = max(best, uploadOnce(t, tp, port, received, 500*time.Millisecond))
	}
	return best
}

func uploadOnce(t *testing.T, tp *topo, port int, received *atomic.Int64, d time.Duration) float64 {
	c, err := dial(t, tp.allowed, serverV4A, port, 2*time.Second)
	if err != nil {
		t.Fatalf("allowed client: %v", err)
	}
	defer c.Close()
	buf := make([]byte, 64*1024)
	start := received.Load()
	deadline := time.Now().Add(d)
	c.SetWriteDeadline(deadline)
	for time.Now().Before(deadline) {
		if _, err := c.Write(buf); err != nil {
			break
		}
	}
	time.Sleep(50 * time.Millisecond)
	return float64(received.Load()-start) / 1e6 / d.Seconds()
}

// sink listens on port in the server namespace and counts what it reads.
func (tp *topo) sink(t *testing.T, port int) *atomic.Int64 {
	var n atomic.Int64
	var ln net.Listener
	var err error
	inNetns(t, tp.server, func() { ln, err = net.Listen("tcp", fmt.Sprintf("[::]:%d", port)) })
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				buf := make([]byte, 256*1024)
				for {
					k, err := c.Read(buf)
					n.Add(int64(k))
					if err != nil {
						return
					}
				}
			}()
		}
	}()
	return &n
}

func median(ds []time.Duration) time.Duration {
	s := append([]time.Duration(nil), ds...)
	for i := range s {
		for j := i + 1; j < len(s); j++ {
			if s[j] < s[i] {
				s[i], s[j] = s[j], s[i]
			}
		}
	}
	return s[len(s)/2]
}

func quietLogger() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

func newQuiet(t *testing.T, tp *topo) *Firewall {
	return New(Deps{Log: quietLogger(), EngineVersion: func() string { return "28.0.0" }, cmd: tp.cmd, ct: netlinkIn(t, tp.server)})
}
