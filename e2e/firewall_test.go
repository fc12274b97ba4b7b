package e2e

import (
	"fmt"
	"os"
	"os/exec"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/zguard/zguard/firewall"
	"github.com/zguard/zguard/internal/testenv"
)

// firewallConfig runs the fake ComfyUI on loopback port `port` with the
// firewall blocking that port and protecting `protected`.
func firewallConfig(image string, port, protected int, prefix, allow string) string {
	return agentConfig(image, port, "", fmt.Sprintf(`
[firewall]
enabled = true
allow = [%s]
protect_ports = [%d]
block_ports = [%d]
reconcile_interval = "300ms"
chain_prefix = %q
`, allow, protected, port, prefix))
}

func iptablesSave(t *testing.T) string {
	t.Helper()
	var b strings.Builder
	for _, tool := range []string{"iptables-save", "ip6tables-save"} {
		out, err := exec.Command(tool).Output()
		if err != nil {
			t.Fatalf("%s: %v", tool, err)
		}
		b.Write(out)
	}
	return b.String()
}

func firstIn(save, chain string) string {
	for l := range strings.Lines(save) {
		if r, ok := strings.CutPrefix(strings.TrimSpace(l), "-A "+chain+" "); ok {
			return r
		}
	}
	return ""
}

// TestFirewallThroughAgent runs the whole agent with the firewall on: its
// status part, the leak guard covering the supervisor's published port,
// repair of a deleted jump, a reload of the allowlist, rules that survive
// the agent's stop, and `zguard cleanup` (twice) removing every trace.
func TestFirewallThroughAgent(t *testing.T) {
	testenv.Require(t, testenv.Root, testenv.Docker, testenv.Iptables)
	img := fakeImage(t)
	port, protected := FreePort(t), FreePort(t)
	prefix := testenv.UniqueName("ZE")
	t.Cleanup(func() { _ = exec.Command(testenv.ZguardBinary(t), "cleanup", "--chain-prefix", prefix).Run() })
	a := StartAgent(t, testenv.UniqueName("zg-e2e-fw-"), firewallConfig(img, port, protected, prefix, `"192.0.2.1"`))
	waitRunning(t, a)

	var st firewall.Status
	WaitFor(t, 20*time.Second, "firewall in sync, leak guard on the published port", func() bool {
		a.Part("firewall", &st)
		return st.Enabled && st.InSync && slices.Contains(st.LeakGuard.Ports, port)
	})
	if !slices.Equal(st.Allow, []string{"192.0.2.1/32"}) || !slices.Equal(st.ProtectedPorts, []int{protected}) || !slices.Equal(st.BlockedPorts, []int{port}) || st.Backend == "" {
		t.Errorf("firewall status: %+v", st)
	}
	save := iptablesSave(t)
	if firstIn(save, "INPUT") != "-j "+prefix+"-INPUT" || firstIn(save, "DOCKER-USER") != "-j "+prefix+"-FORWARD" {
		t.Errorf("zguard's jumps are not first:\n%s", save)
	}
	if st.LeakGuard.Active && firstIn(save, "PREROUTING") != "-j "+prefix+"-RAW" {
		t.Errorf("leak guard active but raw PREROUTING does not start with it:\n%s", save)
	}

	// Another tool deletes the INPUT jump: repaired within an interval.
	if out, err := exec.Command("iptables", "-D", "INPUT", "-j", prefix+"-INPUT").CombinedOutput(); err != nil {
		t.Fatalf("deleting the jump: %v: %s", err, out)
	}
	WaitFor(t, 5*time.Second, "jump repaired", func() bool {
		a.Part("firewall", &st)
		return st.Repairs > 0 && firstIn(iptablesSave(t), "INPUT") == "-j "+prefix+"-INPUT"
	})
	if st.LastDrift == nil || !strings.Contains(strings.Join(st.LastDrift.Changes, " "), "not first in filter/INPUT") {
		t.Errorf("last drift: %+v", st.LastDrift)
	}

	// Reload with a longer allowlist.
	a.WriteConfig(a.Expand(firewallConfig(img, port, protected, prefix, `"192.0.2.1", "198.51.100.0/24", "2001:db8::/48"`)))
	if out, code := a.CLI("reload"); code != 0 {
		t.Fatalf("reload: exit %d: %s", code, out)
	}
	WaitFor(t, 10*time.Second, "new allowlist applied", func() bool {
		a.Part("firewall", &st)
		return len(st.Allow) == 3 && st.InSync
	})
	if save := iptablesSave(t); !strings.Contains(save, "-A "+prefix+"-GATE -s 198.51.100.0/24 -j RETURN") {
		t.Errorf("reloaded allowlist not installed:\n%s", save)
	}

	// Stopping the agent keeps the rules: the host fails closed.
	a.Stop()
	if save := iptablesSave(t); firstIn(save, "INPUT") != "-j "+prefix+"-INPUT" {
		t.Errorf("rules gone after the agent stopped:\n%s", save)
	}

	// zguard cleanup reads the prefix from the config; twice is fine.
	for i, args := range [][]string{{"cleanup", "-c", a.Config}, {"cleanup", "--chain-prefix", prefix}} {
		if out, code := a.CLI(args...); code != 0 {
			t.Fatalf("cleanup %d: exit %d: %s", i+1, code, out)
		}
	}
	if save := iptablesSave(t); strings.Contains(save, prefix) {
		t.Errorf("cleanup left rules behind:\n%s", save)
	}
	if out, _ := exec.Command("ipset", "list", "-n").Output(); strings.Contains(string(out), prefix) {
		t.Errorf("cleanup left sets behind: %s", out)
	}
	_ = os.Remove(a.Socket)
}
