package e2e

import (
	"bufio"
	"encoding/base64"
	"fmt"
	"io"
	"net"
	"net/http"
	"os/exec"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/vishvananda/netns"

	"github.com/zguard/zguard/gateway"
	"github.com/zguard/zguard/internal/testenv"
)

// Addresses of the gateway test's client namespace (TEST-NET-1, a /30 no
// other test uses): the root side of the veth link and the client.
const (
	gwHostAddr   = "192.0.2.201"
	gwClientAddr = "192.0.2.202"
)

func gatewayConfig(image string, comfyPort, gwPort int, prefix string) string {
	return agentConfig(image, comfyPort, "", fmt.Sprintf(`
[firewall]
enabled = true
allow = [%q]
protect_ports = [%d]
block_ports = [%d]
reconcile_interval = "300ms"
chain_prefix = %q
`, gwClientAddr, gwPort, comfyPort, prefix), fmt.Sprintf(`
[gateway]
enabled = true
listen = ["0.0.0.0:%d"]
htpasswd = "{{DIR}}/htpasswd"
tokens = "{{DIR}}/tokens"
audit_log = "{{DIR}}/audit.jsonl"
lockout = { failures = 5, window = "10m", ban = "1h" }
`, gwPort))
}

// gwClientNS makes a namespace whose only link is a veth to the root
// namespace: the client is gwClientAddr, the agent's side gwHostAddr.
func gwClientNS(t *testing.T) string {
	t.Helper()
	id := strings.ToLower(testenv.UniqueName("zg"))
	ns, hostIf := id+"-gw", "zgw"+id[len(id)-6:]
	run := func(args ...string) {
		t.Helper()
		if out, err := exec.Command(args[0], args[1:]...).CombinedOutput(); err != nil {
			t.Fatalf("%s: %v: %s", strings.Join(args, " "), err, out)
		}
	}
	run("ip", "netns", "add", ns)
	t.Cleanup(func() { _ = exec.Command("ip", "netns", "del", ns).Run() })
	run("ip", "-n", ns, "link", "set", "lo", "up")
	run("ip", "link", "add", hostIf, "type", "veth", "peer", "name", "eth0", "netns", ns)
	t.Cleanup(func() { _ = exec.Command("ip", "link", "del", hostIf).Run() })
	run("ip", "addr", "add", gwHostAddr+"/30", "dev", hostIf)
	run("ip", "link", "set", hostIf, "up")
	run("ip", "-n", ns, "addr", "add", gwClientAddr+"/30", "dev", "eth0")
	run("ip", "-n", ns, "link", "set", "eth0", "up")
	return ns
}

// dialFromNS opens a TCP connection from namespace ns; the socket stays in
// that namespace after the dialling thread is gone.
func dialFromNS(t *testing.T, ns, addr string, timeout time.Duration) (net.Conn, error) {
	t.Helper()
	var c net.Conn
	var err error
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		runtime.LockOSThread() // never unlocked: the thread dies with the goroutine
		h, e := netns.GetFromName(ns)
		if e != nil {
			err = e
			return
		}
		defer h.Close()
		if e := netns.Set(h); e != nil {
			err = e
			return
		}
		c, err = net.DialTimeout("tcp", addr, timeout)
	}()
	wg.Wait()
	return c, err
}

// nsGet sends one keep-alive GET on c and returns the status code.
func nsGet(c net.Conn, host, path, auth string) (int, error) {
	c.SetDeadline(time.Now().Add(10 * time.Second))
	defer c.SetDeadline(time.Time{})
	fmt.Fprintf(c, "GET %s HTTP/1.1\r\nHost: %s\r\nAuthorization: %s\r\n\r\n", path, host, auth)
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		return 0, err
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	return resp.StatusCode, nil
}

func basicAuth(user, pw string) string {
	return "Basic " + base64.StdEncoding.EncodeToString([]byte(user+":"+pw))
}

// TestGatewayLockoutThroughFirewall runs the whole agent with the firewall
// and the gateway on. A client in its own network namespace (allowlisted)
// logs in on a keep-alive connection, then fails five logins from the
// same address: the address is banned in the real iptables rules, its open
// connection is cut, new connections are dropped, and status shows the ban.
func TestGatewayLockoutThroughFirewall(t *testing.T) {
	testenv.Require(t, testenv.Root, testenv.Docker, testenv.Iptables, testenv.Netns)
	img := fakeImage(t)
	ns := gwClientNS(t)
	comfyPort, gwPort := FreePort(t), FreePort(t)
	prefix := testenv.UniqueName("ZG")
	t.Cleanup(func() { _ = exec.Command(testenv.ZguardBinary(t), "cleanup", "--chain-prefix", prefix).Run() })
	a := StartAgent(t, testenv.UniqueName("zg-e2e-gw-"), gatewayConfig(img, comfyPort, gwPort, prefix))
	waitRunning(t, a)

	const pw = "e2e-gateway-password-1"
	cmd := exec.Command(a.Bin, "passwd", "-f", a.Dir+"/htpasswd", "-cost", "4", "alice")
	cmd.Stdin = strings.NewReader(pw + "\n")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("zguard passwd: %v: %s", err, out)
	}
	// Every try before the file is loaded would be a failed login.
	var st gateway.Status
	WaitFor(t, 10*time.Second, "the gateway to load the htpasswd file", func() bool {
		a.Part("gateway", &st)
		return st.Users == 1
	})
	target := fmt.Sprintf("%s:%d", gwHostAddr, gwPort)
	good := basicAuth("alice", pw)

	// The client logs in (once the new htpasswd is picked up) and keeps
	// its connection open.
	var keep net.Conn
	WaitFor(t, 20*time.Second, "alice admitted through firewall and gateway", func() bool {
		c, err := dialFromNS(t, ns, target, 2*time.Second)
		if err != nil {
			return false
		}
		if code, err := nsGet(c, target, "/system_stats", good); err != nil || code != 200 {
			c.Close()
			return false
		}
		keep = c
		return true
	})
	defer keep.Close()

	for i := 1; i <= 5; i++ {
		c, err := dialFromNS(t, ns, target, 2*time.Second)
		if err != nil {
			t.Fatalf("attempt %d: dial: %v", i, err)
		}
		code, err := nsGet(c, target, "/", basicAuth("alice", fmt.Sprintf("wrong-guess-%d-xxxx", i)))
		c.Close()
		want := http.StatusUnauthorized
		if i == 5 {
			want = http.StatusForbidden
		}
		if err != nil || code != want {
			t.Fatalf("wrong password %d: %d, %v; want %d", i, code, err, want)
		}
	}

	// The established keep-alive connection is cut.
	keep.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := keep.Read(make([]byte, 1)); err == nil {
		t.Error("the banned client's keep-alive connection still delivers data")
	} else if ne, ok := err.(net.Error); ok && ne.Timeout() {
		t.Error("the banned client's keep-alive connection was not closed")
	}
	// A sixth attempt does not even connect: the firewall drops it.
	if c, err := dialFromNS(t, ns, target, 2*time.Second); err == nil {
		code, err := nsGet(c, target, "/", good)
		c.Close()
		t.Errorf("banned client connected again (answer %d, %v)", code, err)
	}
	if save := iptablesSave(t); !strings.Contains(save, gwClientAddr) {
		t.Errorf("no rule for %s in the firewall:\n%s", gwClientAddr, save)
	}
	a.Part("gateway", &st)
	if len(st.Banned) != 1 || st.Banned[0].Addr != gwClientAddr || !st.Banned[0].Firewall || st.Banned[0].Error != "" {
		t.Errorf("gateway status bans: %+v", st.Banned)
	}
	if st.AuthFailures != 5 || st.Identities != 1 {
		t.Errorf("gateway status: %+v", st)
	}
	// Another address (loopback) is not affected.
	req, _ := http.NewRequest("GET", fmt.Sprintf("http://127.0.0.1:%d/system_stats", gwPort), nil)
	req.Header.Set("Authorization", good)
	resp, err := (&http.Client{Timeout: 5 * time.Second}).Do(req)
	if err != nil {
		t.Fatalf("loopback request after the ban: %v", err)
	}
	resp.Body.Close()
	if resp.StatusCode != 200 {
		t.Errorf("loopback request after the ban = %d, want 200", resp.StatusCode)
	}
}
