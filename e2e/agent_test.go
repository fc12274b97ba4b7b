package e2e

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/zguard/zguard/internal/testenv"
	"github.com/zguard/zguard/supervisor"
)

// agentConfig is the config e2e tests start from: the fake ComfyUI on
// 127.0.0.1:port with containerExtra added to [container], and every other
// subsystem off unless sections replaces it with a whole section of its
// own ("[gpu]\nenabled = true\n...").
func agentConfig(image string, port int, containerExtra string, sections ...string) string {
	order := []string{"firewall", "output", "gpu", "gateway"}
	parts := map[string]string{}
	for _, name := range order {
		parts[name] = "[" + name + "]\nenabled = false\n"
	}
	for _, s := range sections {
		header, _, _ := strings.Cut(strings.TrimSpace(s), "\n")
		parts[strings.Trim(header, "[] ")] = strings.TrimSpace(s) + "\n"
	}
	var b strings.Builder
	fmt.Fprintf(&b, `
[agent]
socket = "{{SOCKET}}"
[container]
name = "{{NAME}}"
image = %q
pull = "never"
gpus = "none"
ports = [{ container = 8188, host = %d }]
reconcile_interval = "1s"
update_interval = "0"
health_timeout = "20s"
restart = { initial = "200ms", max = "2s", reset_after = "1m" }
%s
`, image, port, containerExtra)
	for _, name := range order {
		b.WriteString(parts[name])
	}
	return b.String()
}

// baseConfig is a container-only config.
func baseConfig(image string, port int, extra string) string {
	return agentConfig(image, port, extra)
}

func fakeImage(t *testing.T) string {
	return testenv.FakeComfyImage(t, testenv.ImageSpec{Tag: "zguard-fakecomfy:e2e"})
}

func waitRunning(t *testing.T, a *Agent) supervisor.Status {
	t.Helper()
	var c supervisor.Status
	WaitFor(t, 60*time.Second, "container running and healthy", func() bool {
		c = a.Container()
		return c.State == "running" && c.Health == "healthy"
	})
	return c
}

func TestAgentRunsContainerOnLoopbackOnly(t *testing.T) {
	img := fakeImage(t)
	port := FreePort(t)
	a := StartAgent(t, testenv.UniqueName("zg-e2e-lo-"), baseConfig(img, port, ""))
	c := waitRunning(t, a)
	ins := Inspect(t, c.ID)
	for p, bs := range ins.HostConfig.PortBindings {
		for _, b := range bs {
			if b.HostIP != "127.0.0.1" {
				t.Errorf("host config binds %s on %q", p, b.HostIP)
			}
		}
	}
	for p, bs := range ins.NetworkSettings.Ports {
		for _, b := range bs {
			if b.HostIP != "127.0.0.1" {
				t.Errorf("live binding %s on %q", p, b.HostIP)
			}
		}
	}
	if ins.Config.Labels["zguard.managed"] != "true" || ins.HostConfig.RestartPolicy.Name != "no" {
		t.Errorf("labels %v restart policy %q", ins.Config.Labels, ins.HostConfig.RestartPolicy.Name)
	}
	if code := HTTPGet(fmt.Sprintf("http://127.0.0.1:%d/system_stats", port)); code != 200 {
		t.Fatalf("GET /system_stats on loopback = %d", code)
	}
	out, code := a.CLI("status")
	if code != 0 || !strings.Contains(out, "127.0.0.1:"+fmt.Sprint(port)+"->8188/tcp") {
		t.Fatalf("zguard status exit %d:\n%s", code, out)
	}
	out, code = a.CLI("status", "--json")
	if code != 0 || !strings.Contains(out, `"host_ip": "127.0.0.1"`) {
		t.Fatalf("zguard status --json exit %d:\n%s", code, out)
	}
	if fi, err := os.Stat(a.Socket); err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("control socket mode: %v %v", fi.Mode(), err)
	}
	// SIGTERM is a clean stop: the container keeps serving.
	a.Stop()
	if !Inspect(t, c.ID).State.Running || HTTPGet(fmt.Sprintf("http://127.0.0.1:%d/system_stats", port)) != 200 {
		t.Fatal("container stopped with the agent")
	}
}

func TestStopOnExitStopsTheContainer(t *testing.T) {
	img := fakeImage(t)
	a := StartAgent(t, testenv.UniqueName("zg-e2e-stop-"), baseConfig(img, FreePort(t), `stop_on_exit = true
stop_timeout = "2s"`))
	c := waitRunning(t, a)
	a.Stop()
	if Inspect(t, c.ID).State.Running {
		t.Fatal("stop_on_exit = true left the container running")
	}
}

func TestSameNameUnlabelledContainerIsAConflictNotDeleted(t *testing.T) {
	img := fakeImage(t)
	port := FreePort(t)
	name := testenv.UniqueName("zg-e2e-conflict-")
	t.Cleanup(func() { RemoveContainers(t, name) })
	id := Docker(t, "run", "-d", "--name", name, "-p", fmt.Sprintf("0.0.0.0:%d:8188", port), img)
	a := StartAgent(t, name, baseConfig(img, FreePort(t), ""))
	WaitFor(t, 20*time.Second, "conflict in status", func() bool { return a.Container().Conflict != "" })
	if _, code := a.CLI("status"); code != 2 {
		t.Errorf("status exit = %d, want 2 (CRITICAL)", code)
	}
	time.Sleep(2 * time.Second) // a few reconciles
	ins := Inspect(t, name)
	if ins.ID != id || !ins.State.Running {
		t.Fatalf("the operator's container was touched: id %s running %v", ins.ID, ins.State.Running)
	}
}

func TestStaleLabelledContainerIsRecreatedOnLoopback(t *testing.T) {
	img := fakeImage(t)
	port := FreePort(t)
	name := testenv.UniqueName("zg-e2e-stale-")
	t.Cleanup(func() { RemoveContainers(t, name) })
	old := Docker(t, "run", "-d", "--name", name, "--label", "zguard.managed=true", "--label", "zguard.spec=stale",
		"-p", fmt.Sprintf("0.0.0.0:%d:8188", port), img)
	a := StartAgent(t, name, baseConfig(img, port, ""))
	c := waitRunning(t, a)
	if c.ID == old {
		t.Fatal("stale container adopted")
	}
	for _, p := range Inspect(t, c.ID).NetworkSettings.Ports["8188/tcp"] {
		if p.HostIP != "127.0.0.1" {
			t.Fatalf("recreated container bound on %q", p.HostIP)
		}
	}
}

func TestKilledContainerIsRestartedAndCounted(t *testing.T) {
	img := fakeImage(t)
	port := FreePort(t)
	a := StartAgent(t, testenv.UniqueName("zg-e2e-kill-"), baseConfig(img, port, ""))
	c := waitRunning(t, a)
	Docker(t, "kill", c.ID)
	WaitFor(t, 30*time.Second, "restart after docker kill", func() bool {
		c2 := a.Container()
		return c2.Restarts >= 1 && c2.State == "running" && c2.Health == "healthy"
	})
	if c2 := a.Container(); c2.ID != c.ID {
		t.Errorf("container replaced (%s -> %s); a restart should keep it", c.ID, c2.ID)
	}
	if code := HTTPGet(fmt.Sprintf("http://127.0.0.1:%d/system_stats", port)); code != 200 {
		t.Fatalf("not serving after restart: %d", code)
	}
}

func TestReload(t *testing.T) {
	img := fakeImage(t)
	port := FreePort(t)
	name := testenv.UniqueName("zg-e2e-reload-")
	a := StartAgent(t, name, baseConfig(img, port, `env = { A = "1" }`))
	c := waitRunning(t, a)

	// Unchanged file: nothing is touched.
	out, code := a.CLI("reload")
	if code != 0 || !strings.Contains(out, "nothing changed") {
		t.Fatalf("reload of the same file: exit %d\n%s", code, out)
	}
	time.Sleep(1500 * time.Millisecond)
	if got := a.Container().ID; got != c.ID {
		t.Fatalf("unchanged reload replaced the container: %s -> %s", c.ID, got)
	}

	// Broken files keep the old config and container.
	good := a.Expand(baseConfig(img, port, `env = { A = "1" }`))
	broken := map[string]struct{ text, want string }{
		"syntax error": {strings.Replace(good, `A = "1"`, `A = "1`, 1), "config.toml:"},
		"unknown key":  {good + "\n[container.extra]\nx = 1\n", "unknown key"},
		"port zero":    {strings.Replace(good, "container = 8188", "container = 0", 1), "port 0 out of range"},
		"public host":  {strings.Replace(good, fmt.Sprintf("host = %d", port), fmt.Sprintf("host = %d, host_ip = \"0.0.0.0\"", port), 1), "not a loopback address"},
	}
	for kind, b := range broken {
		a.WriteConfig(b.text)
		out, code := a.CLI("reload")
		if code != 1 || !strings.Contains(out, b.want) || !strings.Contains(out, "previous config stays in force") {
			t.Errorf("%s: reload exit %d, output:\n%s", kind, code, out)
		}
		st, err := a.Status()
		if err != nil || !strings.Contains(st.Config.LastReloadError, b.want) {
			t.Errorf("%s: status last_reload_error = %q", kind, st.Config.LastReloadError)
		}
		if got := a.Container().ID; got != c.ID {
			t.Fatalf("%s: broken reload touched the container", kind)
		}
	}

	// A changed env var recreates the container.
	a.WriteConfig(a.Expand(baseConfig(img, port, `env = { A = "2" }`)))
	t0 := time.Now()
	out, code = a.CLI("reload")
	if code != 0 || !strings.Contains(out, "spec changed") {
		t.Fatalf("reload with new env: exit %d\n%s", code, out)
	}
	var c2 supervisor.Status
	WaitFor(t, 30*time.Second, "recreated container", func() bool {
		c2 = a.Container()
		return c2.ID != c.ID && c2.State == "running" && c2.Health == "healthy"
	})
	t.Logf("reload with changed env: new container healthy after %s", time.Since(t0).Round(time.Millisecond))
	if env := strings.Join(Inspect(t, c2.ID).Config.Env, " "); !strings.Contains(env, "A=2") {
		t.Fatalf("new container env = %s", env)
	}
	st, _ := a.Status()
	if st.Config.LastReloadError != "" {
		t.Errorf("last_reload_error not cleared: %q", st.Config.LastReloadError)
	}
}

func TestStatusExitCodes(t *testing.T) {
	img := fakeImage(t)
	a := StartAgent(t, testenv.UniqueName("zg-e2e-exit-"),
		strings.Replace(baseConfig(img, FreePort(t), ""), `initial = "200ms", max = "2s"`, `initial = "1m", max = "2m"`, 1))
	c := waitRunning(t, a)
	if out, code := a.CLI("status"); code != 0 {
		t.Fatalf("running: exit %d\n%s", code, out)
	}
	// The first crash after a healthy run is restarted at once; a second
	// quick one waits restart.initial (1m here), so the container is down.
	Docker(t, "kill", c.ID)
	WaitFor(t, 20*time.Second, "immediate restart", func() bool { c := a.Container(); return c.Restarts == 1 && c.State == "running" })
	Docker(t, "kill", c.ID)
	WaitFor(t, 20*time.Second, "container down in status", func() bool { return a.Container().State == "restarting" })
	if out, code := a.CLI("status"); code != 2 {
		t.Fatalf("container down: exit %d, want 2\n%s", code, out)
	}
	a.Stop()
	if out, code := a.CLI("status"); code != 3 || !strings.Contains(out, "UNKNOWN") {
		t.Fatalf("agent stopped: exit %d, want 3\n%s", code, out)
	}
}

func TestCheckCommand(t *testing.T) {
	testenv.Require(t, testenv.Root)
	bin := testenv.ZguardBinary(t)
	a := &Agent{t: t, Bin: bin, Socket: filepath.Join(t.TempDir(), "none.sock")}
	out, code := a.CLI("check", "-c", filepath.Join(testenv.RepoRoot(), "config.toml"))
	if code != 0 {
		t.Fatalf("shipped config: exit %d\n%s", code, out)
	}
	dir := t.TempDir()
	bad := map[string]string{
		"syntax.toml":    "[container\nimage = \"x\"\n",
		"unknown.toml":   "[container]\nimage = \"x\"\nfoo = 1\n",
		"port.toml":      "[container]\nimage = \"x\"\nports = [{ container = 65536 }]\n",
		"hostip.toml":    "[container]\nimage = \"x\"\nports = [{ container = 8188, host_ip = \"192.168.1.5\" }]\n",
		"duration.toml":  "[container]\nimage = \"x\"\nhealth_timeout = \"2 minutes\"\n",
		"cidr.toml":      "[container]\nimage = \"x\"\n[firewall]\nallow = [\"300.1.1.1\"]\n",
		"image.toml":     "[container]\nimage = \"Bad Image\"\n",
		"relative.toml":  "[container]\nimage = \"x\"\nvolumes = [\"out:/o\"]\n",
		"limits.toml":    "[container]\nimage = \"x\"\n[gpu]\nsoft_limit = \"99%\"\nhard_limit = \"90%\"\n",
		"pull.toml":      "[container]\nimage = \"x\"\npull = \"sometimes\"\n",
		"nocontain.toml": "[agent]\nlog_level = \"info\"\n",
	}
	for file, text := range bad {
		p := filepath.Join(dir, file)
		os.WriteFile(p, []byte(text), 0o600)
		out, code := a.CLI("check", "-c", p)
		if code != 1 {
			t.Errorf("%s: exit %d, want 1\n%s", file, code, out)
		}
		if !strings.Contains(out, p+":") {
			t.Errorf("%s: output does not name the file:\n%s", file, out)
		}
		if file != "nocontain.toml" && !strings.Contains(out, p+":2") && !strings.Contains(out, p+":3") && !strings.Contains(out, p+":4") && !strings.Contains(out, p+":1") {
			t.Errorf("%s: output has no line number:\n%s", file, out)
		}
	}
}
