package e2e

import (
	"context"
	"fmt"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/docker/docker/api/types/container"
	"github.com/docker/docker/api/types/filters"
	"github.com/zguard/zguard/comfy/fakecomfy"
	"github.com/zguard/zguard/internal/testenv"
	"github.com/zguard/zguard/supervisor"
)

// variants builds the four fake images the update tests use.
func variants(t *testing.T) map[string]string {
	t.Helper()
	return map[string]string{
		"v1": testenv.FakeComfyImage(t, testenv.ImageSpec{Tag: "zguard-fakecomfy:v1", Args: []string{"-version", "v1"}}),
		"v2": testenv.FakeComfyImage(t, testenv.ImageSpec{Tag: "zguard-fakecomfy:v2", Args: []string{"-version", "v2"}}),
		"v3": testenv.FakeComfyImage(t, testenv.ImageSpec{Tag: "zguard-fakecomfy:v3", Args: []string{"-version", "v3", "-unhealthy"}}),
		"v4": testenv.FakeComfyImage(t, testenv.ImageSpec{Tag: "zguard-fakecomfy:v4", Args: []string{"-version", "v4", "-exit-after", "300ms", "-exit-code", "3"}}),
		"v2slow": testenv.FakeComfyImage(t, testenv.ImageSpec{Tag: "zguard-fakecomfy:v2slow",
			Args: []string{"-version", "v2slow", "-startup-delay", "6s"}}),
	}
}

// servedVersion asks the container on 127.0.0.1:port which version it is.
func servedVersion(port int) string {
	st, _ := fakecomfy.ReadStats(fmt.Sprintf("http://127.0.0.1:%d", port))
	return st.Version
}

// containersNamed lists containers whose name starts with name.
func containersNamed(t *testing.T, name string) []container.Summary {
	t.Helper()
	cli, err := testenv.DockerClient()
	if err != nil {
		t.Fatal(err)
	}
	defer cli.Close()
	list, err := cli.ContainerList(context.Background(), container.ListOptions{All: true, Filters: filters.NewArgs(filters.Arg("name", name))})
	if err != nil {
		t.Fatal(err)
	}
	return list
}

// updateConfig pulls ref from the test registry and checks it for new
// digests every interval.
func updateConfig(ref string, port int, interval string) string {
	cfg := strings.Replace(baseConfig(ref, port, ""), `pull = "never"`, `pull = "always"`, 1)
	return strings.Replace(cfg, `update_interval = "0"`, fmt.Sprintf("update_interval = %q", interval), 1)
}

func TestUpdateRollbackAndRegistryOutage(t *testing.T) {
	v := variants(t)
	reg := StartRegistry(t)
	ref := reg.Push(v["v1"], "zgtest/comfy:latest")
	port := FreePort(t)
	name := testenv.UniqueName("zg-e2e-upd-")
	a := StartAgent(t, name, updateConfig(ref, port, "2s"))
	waitRunning(t, a)
	if got := servedVersion(port); got != "v1" {
		t.Fatalf("serving %q, want v1", got)
	}

	// v2 on the same tag: updated, healthy, old container removed.
	t0 := time.Now()
	reg.Push(v["v2"], "zgtest/comfy:latest")
	WaitFor(t, 60*time.Second, "update to v2", func() bool {
		c := a.Container()
		return c.LastUpdate != nil && c.LastUpdate.Result == "updated" && servedVersion(port) == "v2"
	})
	t.Logf("new digest pushed -> v2 serving after %s", time.Since(t0).Round(time.Millisecond))
	WaitFor(t, 10*time.Second, "old container removed", func() bool { return len(containersNamed(t, name)) == 1 })
	c := a.Container()
	if c.State != "running" || c.Ports[0].HostIP != "127.0.0.1" {
		t.Fatalf("after update: %+v", c)
	}

	// v3 fails its health check: rolled back to v2.
	reg.Push(v["v3"], "zgtest/comfy:latest")
	WaitFor(t, 90*time.Second, "rollback from v3", func() bool {
		c := a.Container()
		return c.LastUpdate != nil && c.LastUpdate.Result == "rolled_back"
	})
	c = a.Container()
	if !strings.Contains(c.LastUpdate.Error, "health") {
		t.Errorf("rollback reason = %q", c.LastUpdate.Error)
	}
	WaitFor(t, 20*time.Second, "v2 serving again", func() bool { return servedVersion(port) == "v2" })
	if n := len(containersNamed(t, name)); n != 1 {
		t.Fatalf("%d containers after rollback, want 1", n)
	}
	for _, p := range Inspect(t, name).NetworkSettings.Ports["8188/tcp"] {
		if p.HostIP != "127.0.0.1" {
			t.Fatalf("after rollback bound on %s", p.HostIP)
		}
	}
	// The known-bad digest is not retried on every check.
	time.Sleep(5 * time.Second)
	if c2 := a.Container(); c2.ID != c.ID {
		t.Fatalf("container replaced again after rollback: %s -> %s", c.ID, c2.ID)
	}

	// Registry down: the check fails, the container is untouched, WARNING.
	reg.Stop()
	WaitFor(t, 30*time.Second, "failed update check", func() bool {
		c := a.Container()
		return c.LastUpdate != nil && c.LastUpdate.Result == "failed"
	})
	out, code := a.CLI("status")
	if code != 1 || !strings.Contains(out, "update check failed") {
		t.Fatalf("registry down: status exit %d\n%s", code, out)
	}
	if c2 := a.Container(); c2.ID != c.ID || c2.State != "running" || servedVersion(port) != "v2" {
		t.Fatalf("container touched while registry down: %+v", c2)
	}
}

func TestCrashLoopBacksOffAndReports(t *testing.T) {
	v := variants(t)
	a := StartAgent(t, testenv.UniqueName("zg-e2e-loop-"), baseConfig(v["v4"], FreePort(t),
		`crash_loop = { restarts = 4, window = "1m" }`))
	var c supervisor.Status
	WaitFor(t, 60*time.Second, "crash loop detected", func() bool {
		c = a.Container()
		return c.State == "crashloop" && len(c.RestartDelays) >= 4
	})
	if _, code := a.CLI("status"); code != 2 {
		t.Fatalf("crash loop: status exit %d, want 2", code)
	}
	var prev time.Duration
	for i, s := range c.RestartDelays {
		d, err := time.ParseDuration(s)
		if err != nil {
			t.Fatal(err)
		}
		if i > 0 && d < prev {
			t.Fatalf("backoff shrank: %v", c.RestartDelays)
		}
		prev = d
	}
	first, _ := time.ParseDuration(c.RestartDelays[0])
	if prev <= first {
		t.Fatalf("backoff did not grow: %v", c.RestartDelays)
	}
	if len(c.LastExits) == 0 || c.LastExits[len(c.LastExits)-1].Code != 3 {
		t.Fatalf("last exits = %+v", c.LastExits)
	}
	if !strings.Contains(strings.Join(c.LogTail, "\n"), "exiting with code 3") {
		t.Fatalf("log tail = %q", c.LogTail)
	}
}

func TestDockerdRestartIsSurvived(t *testing.T) {
	testenv.RequireDockerdRestart(t)
	img := fakeImage(t)
	port := FreePort(t)
	name := testenv.UniqueName("zg-e2e-dockerd-")
	a := StartAgent(t, name, baseConfig(img, port, ""))
	waitRunning(t, a)
	testenv.StopDockerd(t)
	WaitFor(t, 20*time.Second, "docker unreachable in status", func() bool { return a.Container().Docker == "unreachable" })
	out, code := a.CLI("status")
	if code != 1 || !strings.Contains(out, "docker: unreachable") {
		t.Fatalf("dockerd down: status exit %d\n%s", code, out)
	}
	t0 := time.Now()
	testenv.StartDockerd(t)
	WaitFor(t, 60*time.Second, "container serving again", func() bool {
		c := a.Container()
		return c.Docker == "ok" && c.State == "running" && HTTPGet(fmt.Sprintf("http://127.0.0.1:%d/system_stats", port)) == 200
	})
	t.Logf("dockerd back -> container serving after %s", time.Since(t0).Round(time.Millisecond))
	if n := len(containersNamed(t, name)); n != 1 {
		t.Fatalf("%d containers after dockerd restart, want 1", n)
	}
	for _, p := range Inspect(t, name).NetworkSettings.Ports["8188/tcp"] {
		if p.HostIP != "127.0.0.1" {
			t.Fatalf("bound on %s after dockerd restart", p.HostIP)
		}
	}
}

func TestCrashDuringUpdateRecovers(t *testing.T) {
	v := variants(t)
	reg := StartRegistry(t)
	ref := reg.Push(v["v1"], "zgtest/crash:latest")
	port := FreePort(t)
	name := testenv.UniqueName("zg-e2e-crashupd-")
	a := StartAgent(t, name, updateConfig(ref, port, "1s"))
	waitRunning(t, a)
	reg.Push(v["v2slow"], "zgtest/crash:latest") // takes 6 s to answer: time to crash mid-gate
	WaitFor(t, 60*time.Second, "old container renamed", func() bool {
		for _, c := range containersNamed(t, name) {
			for _, n := range c.Names {
				if strings.HasSuffix(n, "-zguard-old") {
					return true
				}
			}
		}
		return false
	})
	a.Kill9()
	a.Start(AgentOptions{})
	WaitFor(t, 60*time.Second, "one healthy container after recovery", func() bool {
		list := containersNamed(t, name)
		c := a.Container()
		return len(list) == 1 && c.State == "running" && c.Health == "healthy" && HTTPGet(fmt.Sprintf("http://127.0.0.1:%d/system_stats", port)) == 200
	})
	t.Logf("after recovery serving %s; drift: %+v", servedVersion(port), a.Container().LastDrift)
}

func TestDriftIsRepaired(t *testing.T) {
	img := fakeImage(t)
	port := FreePort(t)
	name := testenv.UniqueName("zg-e2e-drift-")
	cfg := baseConfig(img, port, "")
	a := StartAgent(t, name, cfg)
	c := waitRunning(t, a)
	labels := Inspect(t, c.ID).Config.Labels

	// Hand-made container under zguard's label, published on all addresses.
	a.Stop()
	Docker(t, "rm", "-f", name)
	args := []string{"run", "-d", "--name", name, "-p", fmt.Sprintf("0.0.0.0:%d:8188", port)}
	for k, v := range labels {
		args = append(args, "--label", k+"="+v)
	}
	hand := Docker(t, append(args, img)...)
	a.Start(AgentOptions{})
	WaitFor(t, 10*time.Second, "public binding repaired", func() bool {
		c := a.Container()
		return c.ID != "" && c.ID != hand && c.State == "running" && len(c.Ports) == 1 && c.Ports[0].HostIP == "127.0.0.1"
	})
	if d := a.Container().LastDrift; d == nil || !strings.Contains(d.What, "not loopback") {
		t.Fatalf("last drift = %+v", d)
	}

	// Disconnected from its network while zguard runs: repaired within one interval.
	c = a.Container()
	Docker(t, "network", "disconnect", "bridge", c.ID)
	WaitFor(t, 5*time.Second, "network drift repaired", func() bool {
		c2 := a.Container()
		return c2.State == "running" && HTTPGet(fmt.Sprintf("http://127.0.0.1:%d/system_stats", port)) == 200 &&
			c2.LastDrift != nil && strings.Contains(c2.LastDrift.What, "network")
	})

	// Removed behind zguard's back: recreated.
	c = a.Container()
	Docker(t, "rm", "-f", c.ID)
	WaitFor(t, 10*time.Second, "removed container recreated", func() bool {
		c2 := a.Container()
		return c2.ID != c.ID && c2.State == "running"
	})
}

func TestKernelOOMKillIsReported(t *testing.T) {
	img := testenv.FakeComfyImage(t, testenv.ImageSpec{Tag: "zguard-fakecomfy:oom", Args: []string{"-alloc-mib", "256"}})
	a := StartAgent(t, testenv.UniqueName("zg-e2e-oom-"), baseConfig(img, FreePort(t), `memory = "32MiB"`))
	WaitFor(t, 60*time.Second, "OOM kill reported", func() bool {
		c := a.Container()
		return c.OOMKills > 0 && len(c.LastExits) > 0 && c.LastExits[len(c.LastExits)-1].OOMKilled
	})
}

// TestLiveRestoreKeepsTheContainer runs dockerd with --live-restore: while
// the daemon is down the container keeps running and zguard deletes and
// restarts nothing; when it is back, the same container is adopted.
func TestLiveRestoreKeepsTheContainer(t *testing.T) {
	testenv.RequireDockerdRestart(t)
	img := fakeImage(t)
	testenv.StopDockerd(t)
	testenv.StartDockerdWith(t, "--live-restore")
	t.Cleanup(func() { // leave the host's dockerd as it was: without live-restore
		testenv.StopDockerd(t)
		testenv.StartDockerd(t)
	})
	port := FreePort(t)
	name := testenv.UniqueName("zg-e2e-live-")
	a := StartAgent(t, name, baseConfig(img, port, ""))
	c := waitRunning(t, a)
	pid := Inspect(t, c.ID).State.Pid

	testenv.StopDockerd(t)
	WaitFor(t, 20*time.Second, "docker unreachable in status", func() bool { return a.Container().Docker == "unreachable" })
	if err := syscall.Kill(pid, 0); err != nil {
		t.Fatalf("container process %d died with dockerd despite live-restore: %v", pid, err)
	}
	testenv.StartDockerdWith(t, "--live-restore")
	WaitFor(t, 60*time.Second, "container adopted again", func() bool {
		c2 := a.Container()
		return c2.Docker == "ok" && c2.State == "running" && HTTPGet(fmt.Sprintf("http://127.0.0.1:%d/system_stats", port)) == 200
	})
	c2 := a.Container()
	if c2.ID != c.ID || c2.Restarts != 0 || Inspect(t, c.ID).State.Pid != pid {
		t.Fatalf("container was replaced or restarted: id %s -> %s, restarts %d", c.ID, c2.ID, c2.Restarts)
	}
}
