package firewall

import (
	"bufio"
	"context"
	"fmt"
	"math/rand/v2"
	"net"
	"net/netip"
	"os/exec"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/docker/docker/api/types/container"
	"github.com/docker/go-connections/nat"
	"github.com/zguard/zguard/internal/testenv"
)

// rootClients builds two client namespaces routed to the root namespace
// over veth links: allowed 198.51.100.2 (root side 198.51.100.1) and denied
// 203.0.113.2 (root side 203.0.113.1).
func rootClients(t *testing.T) (allowed, denied string) {
	t.Helper()
	id := strings.ToLower(testenv.UniqueName("zr"))
	mk := func(ns, hostIf, hostAddr, clientAddr string) {
		sh(t, "ip", "netns", "add", ns)
		t.Cleanup(func() { _ = exec.Command("ip", "netns", "del", ns).Run() })
		sh(t, "ip", "-n", ns, "link", "set", "lo", "up")
		sh(t, "ip", "link", "add", hostIf, "type", "veth", "peer", "name", "eth0", "netns", ns)
		t.Cleanup(func() { _ = exec.Command("ip", "link", "del", hostIf).Run() })
		sh(t, "ip", "addr", "add", hostAddr+"/24", "dev", hostIf)
		sh(t, "ip", "link", "set", hostIf, "up")
		sh(t, "ip", "-n", ns, "addr", "add", clientAddr+"/24", "dev", "eth0")
		sh(t, "ip", "-n", ns, "link", "set", "eth0", "up")
		sh(t, "ip", "-n", ns, "route", "add", "default", "via", hostAddr)
	}
	suffix := id[len(id)-6:]
	allowed, denied = id+"-a", id+"-d"
	mk(allowed, "zfa"+suffix, "198.51.100.1", "198.51.100.2")
	mk(denied, "zfd"+suffix, "203.0.113.1", "203.0.113.2")
	return allowed, denied
}

// httpReach reports whether an HTTP GET from namespace ns to addr:port
// gets any answer.
func httpReach(t *testing.T, ns string, addr netip.Addr, port int) bool {
	t.Helper()
	c, err := dial(t, ns, addr, port, 700*time.Millisecond)
	if err != nil {
		return false
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(700 * time.Millisecond))
	fmt.Fprintf(c, "GET /system_stats HTTP/1.0\r\nHost: example\r\n\r\n")
	line, err := bufio.NewReader(c).ReadString('\n')
	return err == nil && strings.HasPrefix(line, "HTTP/")
}

func freePorts(n int) []int {
	base := 20000 + rand.IntN(20000)
	out := make([]int, n)
	for i := range out {
		out[i] = base + i
	}
	return out
}

// rootSnapshot returns the parts of the root namespace's rules zguard may
// touch (filter INPUT, FORWARD, DOCKER-USER, the raw table, all of IPv6),
// without counters. Docker's own chains change with every container other
// tests start, so they are left out.
func rootSnapshot(t *testing.T) string {
	t.Helper()
	var b strings.Builder
	for _, tool := range []string{"iptables-save", "ip6tables-save"} {
		out, err := exec.Command(tool).Output()
		if err != nil {
			t.Fatalf("%s: %v", tool, err)
		}
		tbl := ""
		for l := range strings.Lines(stripSave(string(out))) {
			if strings.HasPrefix(l, "*") {
				tbl = l
			}
			keep := tool == "ip6tables-save" || strings.HasPrefix(tbl, "*raw") ||
				(strings.HasPrefix(tbl, "*filter") && (strings.HasPrefix(l, "-A INPUT ") || strings.HasPrefix(l, "-A FORWARD ") || strings.HasPrefix(l, "-A DOCKER-USER ") ||
					strings.HasPrefix(l, ":INPUT") || strings.HasPrefix(l, ":FORWARD") || strings.HasPrefix(l, ":DOCKER-USER")))
			if keep || strings.HasPrefix(l, "*") {
				b.WriteString(tool + " " + l)
			}
		}
	}
	return b.String()
}

// TestDockerPublishedOnAllAddresses runs a real container published on
// 0.0.0.0 (the misconfiguration zguard exists for) and checks the
// DOCKER-USER path: the protected published port answers only the allowed
// client, the blocked one nobody from outside, loopback still works, and
// cleanup leaves the root namespace as it was.
func TestDockerPublishedOnAllAddresses(t *testing.T) {
	testenv.Require(t, testenv.Root, testenv.Docker, testenv.Iptables, testenv.Netns)
	img := testenv.FakeComfyImage(t, testenv.ImageSpec{Tag: "zguard-fakecomfy:firewall-test"})
	before := rootSnapshot(t)
	allowedNS, deniedNS := rootClients(t)

	ports := freePorts(2)
	protected, blocked := ports[0], ports[1]
	cli, err := testenv.DockerClient()
	if err != nil {
		t.Fatal(err)
	}
	defer cli.Close()
	ctx := context.Background()
	name := testenv.UniqueName("zguard-fw-")
	resp, err := cli.ContainerCreate(ctx, &container.Config{Image: img, ExposedPorts: nat.PortSet{"8188/tcp": {}}},
		&container.HostConfig{PortBindings: nat.PortMap{"8188/tcp": {
			{HostIP: "0.0.0.0", HostPort: strconv.Itoa(protected)},
			{HostIP: "0.0.0.0", HostPort: strconv.Itoa(blocked)},
		}}}, nil, nil, name)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = cli.ContainerRemove(context.Background(), resp.ID, container.RemoveOptions{Force: true})
	})
	if err := cli.ContainerStart(ctx, resp.ID, container.StartOptions{}); err != nil {
		t.Fatal(err)
	}
	// Wait until the fake ComfyUI answers from outside, before zguard.
	ok := false
	for i := 0; i < 50 && !ok; i++ {
		ok = httpReach(t, deniedNS, netip.MustParseAddr("203.0.113.1"), protected)
		if !ok {
			time.Sleep(100 * time.Millisecond)
		}
	}
	if !ok {
		t.Fatal("container not reachable through its 0.0.0.0 publication even without zguard")
	}

	engine := ""
	if v, err := cli.ServerVersion(ctx); err == nil {
		engine = v.Version
	}
	fw := New(Deps{Log: testLogger(t), EngineVersion: func() string { return engine }, PublishedPorts: func() []int { return ports }})
	cfg := testConfig(t, "198.51.100.2")
	cfg.ProtectPorts, cfg.BlockPorts = []int{protected}, []int{blocked}
	cfg.IPv6 = "auto"
	if err := fw.Apply(ctx, cfg); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = Cleanup(context.Background(), cfg.ChainPrefix, testLogger(t)) })

	allowedHost, deniedHost := netip.MustParseAddr("198.51.100.1"), netip.MustParseAddr("203.0.113.1")
	loop := netip.MustParseAddr("127.0.0.1")
	cases := map[string]struct {
		ns   string
		addr netip.Addr
		port int
		want bool
	}{
		"allowed client reaches protected port": {allowedNS, allowedHost, protected, true},
		"denied client dropped":                 {deniedNS, deniedHost, protected, false},
		"denied client via the other address":   {deniedNS, allowedHost, protected, false},
		"allowed client, blocked port":          {allowedNS, allowedHost, blocked, false},
		"denied client, blocked port":           {deniedNS, deniedHost, blocked, false},
		"loopback, blocked port":                {"", loop, blocked, true},
		"loopback, protected port":              {"", loop, protected, true},
	}
	for name, c := range cases {
		t.Run(name, func(t *testing.T) {
			var got bool
			if c.ns == "" {
				got = hostHTTPReach(c.addr, c.port)
			} else {
				got = httpReach(t, c.ns, c.addr, c.port)
			}
			if got != c.want {
				t.Errorf("reach %s:%d from %q = %v, want %v", c.addr, c.port, c.ns, got, c.want)
			}
		})
	}
	st := fw.Status()
	if !st.InSync || st.Drops["deny"] == 0 || st.Drops["block"] == 0 {
		// Counters are read at the start of a reconcile; take one more look.
		fw.mu.Lock()
		_ = fw.reconcileLocked(ctx, "timer", false)
		fw.mu.Unlock()
		st = fw.Status()
	}
	if !st.InSync || st.Drops["deny"] == 0 || st.Drops["block"] == 0 {
		t.Errorf("status = in_sync %v drops %v", st.InSync, st.Drops)
	}
	t.Logf("leak guard %+v, backend %s, drops %v", st.LeakGuard, st.Backend, st.Drops)

	for range 2 {
		if err := Cleanup(ctx, cfg.ChainPrefix, testLogger(t)); err != nil {
			t.Fatal(err)
		}
	}
	if after := rootSnapshot(t); after != before {
		t.Errorf("root namespace after cleanup:\n%s\nbefore:\n%s", after, before)
	}
	if !httpReach(t, deniedNS, deniedHost, protected) {
		t.Error("after cleanup the container is not reachable again (rules left behind?)")
	}
}

// hostHTTPReach is httpReach from the test's own (root) namespace.
func hostHTTPReach(addr netip.Addr, port int) bool {
	c, err := (&net.Dialer{Timeout: time.Second}).Dial("tcp", netip.AddrPortFrom(addr, uint16(port)).String())
	if err != nil {
		return false
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(time.Second))
	fmt.Fprintf(c, "GET /system_stats HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")
	line, err := bufio.NewReader(c).ReadString('\n')
	return err == nil && strings.HasPrefix(line, "HTTP/")
}

// TestDockerRestartRepaired restarts dockerd under a running firewall: the
// rules are in sync afterwards and zguard's DOCKER-USER jump is first.
// Restarting dockerd stops every container on the host, so outside CI
// (ZGUARD_REQUIRE_PRIVILEGED=1, packages one at a time) it runs only when
// ZGUARD_TEST_DOCKERD_RESTART=1.
func TestDockerRestartRepaired(t *testing.T) {
	testenv.RequireDockerdRestart(t)
	testenv.Require(t, testenv.Iptables)
	fw := New(Deps{Log: testLogger(t), EngineVersion: func() string { return "20.10.24" }})
	cfg := testConfig(t, "198.51.100.2")
	cfg.IPv6 = "auto"
	cfg.ReconcileInterval.UnmarshalText([]byte("500ms"))
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	if err := fw.Apply(ctx, cfg); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = Cleanup(context.Background(), cfg.ChainPrefix, testLogger(t)) })
	done := make(chan error, 1)
	go func() { done <- fw.Run(ctx) }()

	testenv.RestartDockerd(t)
	fw.Repair("docker daemon started") // what the agent does on the daemon's reconnect
	n := namesFor(cfg.ChainPrefix)
	deadline := time.Now().Add(3 * time.Second)
	var save string
	for time.Now().Before(deadline) {
		out, _ := exec.Command("iptables-save").Output()
		save = string(out)
		if strings.Contains(save, "-A DOCKER-USER -j "+n.forward+"\n") && fw.Status().InSync && firstRule(save, "DOCKER-USER") == "-j "+n.forward && firstRule(save, "INPUT") == "-j "+n.input {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	if firstRule(save, "DOCKER-USER") != "-j "+n.forward || firstRule(save, "INPUT") != "-j "+n.input || !fw.Status().InSync {
		t.Errorf("after dockerd restart: status %+v\n%s", fw.Status(), save)
	}
	if f := firstRule(save, "FORWARD"); !strings.HasSuffix(f, "-j DOCKER-USER") {
		t.Errorf("FORWARD starts with %q, want a jump to DOCKER-USER", f)
	}
	cancel()
	<-done
}

func firstRule(save, chain string) string {
	for l := range strings.Lines(save) {
		if r, ok := strings.CutPrefix(strings.TrimSpace(l), "-A "+chain+" "); ok {
			return r
		}
	}
	return ""
}
