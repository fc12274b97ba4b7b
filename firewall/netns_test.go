package firewall

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os/exec"
	"runtime"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"github.com/zguard/zguard/internal/testenv"
)

// topo is a test network: a "server" namespace where the firewall runs,
// and two client namespaces, each on its own veth link to the server:
//
//	allowed  198.51.100.2/24, 2001:db8:1::2/64  <->  server 198.51.100.1, 2001:db8:1::1
//	denied   203.0.113.2/24,  2001:db8:2::2/64  <->  server 203.0.113.1,  2001:db8:2::1
type topo struct {
	server, allowed, denied string // namespace names
	cmd                     execCommander
}

var (
	serverV4A = netip.MustParseAddr("198.51.100.1")
	serverV4D = netip.MustParseAddr("203.0.113.1")
	serverV6A = netip.MustParseAddr("2001:db8:1::1")
	serverV6D = netip.MustParseAddr("2001:db8:2::1")
	allowedV4 = netip.MustParseAddr("198.51.100.2")
	deniedV4  = netip.MustParseAddr("203.0.113.2")
	allowedV6 = netip.MustParseAddr("2001:db8:1::2")
	deniedV6  = netip.MustParseAddr("2001:db8:2::2")
)

func sh(t testing.TB, args ...string) {
	t.Helper()
	if out, err := exec.Command(args[0], args[1:]...).CombinedOutput(); err != nil {
		t.Fatalf("%s: %v: %s", strings.Join(args, " "), err, out)
	}
}

func newTopo(t testing.TB) *topo {
	t.Helper()
	testenv.Require(t, testenv.Root, testenv.Netns, testenv.Iptables)
	id := strings.ToLower(testenv.UniqueName("zf"))
	tp := &topo{server: id + "-s", allowed: id + "-a", denied: id + "-d"}
	tp.cmd = execCommander{netns: tp.server}
	for _, ns := range []string{tp.server, tp.allowed, tp.denied} {
		sh(t, "ip", "netns", "add", ns)
		t.Cleanup(func() { _ = exec.Command("ip", "netns", "del", ns).Run() })
		sh(t, "ip", "-n", ns, "link", "set", "lo", "up")
		// No duplicate address detection: link-local addresses would stay
		// tentative for a second and delay neighbour discovery.
		sh(t, "ip", "netns", "exec", ns, "sysctl", "-qw", "net.ipv6.conf.all.accept_dad=0", "net.ipv6.conf.default.accept_dad=0")
	}
	link := func(client, cv4, sv4, cv6, sv6, peer string) {
		sh(t, "ip", "-n", client, "link", "add", "eth0", "type", "veth", "peer", "name", peer, "netns", tp.server)
		sh(t, "ip", "-n", client, "addr", "add", cv4+"/24", "dev", "eth0")
		sh(t, "ip", "-n", client, "addr", "add", cv6+"/64", "dev", "eth0", "nodad")
		sh(t, "ip", "-n", client, "link", "set", "eth0", "up")
		sh(t, "ip", "-n", tp.server, "addr", "add", sv4+"/24", "dev", peer)
		sh(t, "ip", "-n", tp.server, "addr", "add", sv6+"/64", "dev", peer, "nodad")
		sh(t, "ip", "-n", tp.server, "link", "set", peer, "up")
	}
	link(tp.allowed, allowedV4.String(), serverV4A.String(), allowedV6.String(), serverV6A.String(), "ea")
	link(tp.denied, deniedV4.String(), serverV4D.String(), deniedV6.String(), serverV6D.String(), "ed")
	// Wait until both families answer, so the first test connection does
	// not race neighbour discovery.
	for _, p := range []struct {
		ns   string
		addr netip.Addr
	}{
		{tp.allowed, serverV4A}, {tp.allowed, serverV6A}, {tp.denied, serverV4D}, {tp.denied, serverV6D},
	} {
		// Nothing listens on port 9: "connection refused" means the path works.
		ok := false
		for i := 0; i < 50 && !ok; i++ {
			c, err := dial(t, p.ns, p.addr, 9, 200*time.Millisecond)
			if err == nil {
				c.Close()
			}
			ok = err == nil || errors.Is(err, syscall.ECONNREFUSED)
		}
		if !ok {
			t.Fatalf("no path from %s to %s", p.ns, p.addr)
		}
	}
	return tp
}

// inNetns runs fn on an OS thread switched into namespace name; sockets
// created there stay in that namespace.
func inNetns(t testing.TB, name string, fn func()) {
	t.Helper()
	var wg sync.WaitGroup
	var ferr error
	wg.Add(1)
	go func() {
		defer wg.Done()
		runtime.LockOSThread()
		// The thread is left locked: it exits with the goroutine instead of
		// going back to the pool in the wrong namespace.
		h, err := netns.GetFromName(name)
		if err != nil {
			ferr = err
			return
		}
		defer h.Close()
		if err := netns.Set(h); err != nil {
			ferr = err
			return
		}
		fn()
	}()
	wg.Wait()
	if ferr != nil {
		t.Fatalf("entering netns %s: %v", name, ferr)
	}
}

// listen starts a TCP server in the server namespace on port (all
// addresses, both families) that streams zero bytes to every client.
func (tp *topo) listen(t testing.TB, port int) {
	t.Helper()
	var ln net.Listener
	var err error
	inNetns(t, tp.server, func() { ln, err = net.Listen("tcp", fmt.Sprintf("[::]:%d", port)) })
	if err != nil {
		t.Fatalf("listening on %d: %v", port, err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		buf := make([]byte, 4096)
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				for {
					c.SetWriteDeadline(time.Now().Add(30 * time.Second))
					if _, err := c.Write(buf); err != nil {
						return
					}
					time.Sleep(time.Millisecond)
				}
			}()
		}
	}()
}

// dial connects from namespace ns to addr:port with a short timeout.
func dial(t testing.TB, ns string, addr netip.Addr, port int, timeout time.Duration) (net.Conn, error) {
	t.Helper()
	var c net.Conn
	var err error
	inNetns(t, ns, func() {
		c, err = net.DialTimeout("tcp", netip.AddrPortFrom(addr, uint16(port)).String(), timeout)
	})
	return c, err
}

// reach reports whether a client in ns gets bytes from addr:port.
func reach(t testing.TB, ns string, addr netip.Addr, port int) bool {
	t.Helper()
	c, err := dial(t, ns, addr, port, 400*time.Millisecond)
	if err != nil {
		return false
	}
	defer c.Close()
	c.SetReadDeadline(time.Now().Add(400 * time.Millisecond))
	_, err = io.ReadFull(c, make([]byte, 1))
	return err == nil
}

// netlinkIn returns a conntracker for namespace name.
func netlinkIn(t testing.TB, name string) conntracker {
	t.Helper()
	h, err := netns.GetFromName(name)
	if err != nil {
		t.Fatal(err)
	}
	nh, err := netlink.NewHandleAt(h)
	h.Close()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nh.Close)
	return netlinkConntrack{h: nh}
}

func (tp *topo) save(t testing.TB, tool string) string {
	t.Helper()
	out, err := tp.cmd.run(context.Background(), nil, tool)
	if err != nil && !errors.Is(err, context.Canceled) {
		t.Fatalf("%s: %v", tool, err)
	}
	return stripSave(string(out))
}

// stripSave drops comments and counters from iptables-save output, which
// is how before/after snapshots are compared.
func stripSave(s string) string {
	var b strings.Builder
	for l := range strings.Lines(s) {
		if strings.HasPrefix(l, "#") {
			continue
		}
		if strings.HasPrefix(l, ":") {
			if i := strings.LastIndex(l, " ["); i > 0 {
				l = l[:i] + "\n"
			}
		}
		if strings.HasPrefix(l, "[") {
			if i := strings.Index(l, "] "); i > 0 {
				l = l[i+2:]
			}
		}
		b.WriteString(l)
	}
	return b.String()
}
