package e2e

import (
	"context"
	"encoding/json"
	"errors"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/docker/docker/api/types/container"
	"github.com/docker/docker/api/types/filters"
	"github.com/zguard/zguard/agent"
	"github.com/zguard/zguard/internal/testenv"
	"github.com/zguard/zguard/supervisor"
)

// Agent is a running `zguard run` started by a test.
type Agent struct {
	t      testing.TB
	Bin    string
	Dir    string // temp dir holding config, socket and log
	Config string // config file path
	Socket string
	Name   string // container name
	cmd    *exec.Cmd
	log    *lockedBuffer
	done   chan struct{}
}

// AgentOptions tune StartAgent.
type AgentOptions struct {
	// NoWait skips waiting for the control socket.
	NoWait bool
	// Env adds environment variables for the agent process.
	Env []string
}

// FreePort returns a TCP port free on 127.0.0.1 right now.
func FreePort(t testing.TB) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// WriteConfig writes text as the agent's config file (for reloads).
func (a *Agent) WriteConfig(text string) {
	a.t.Helper()
	if err := os.WriteFile(a.Config, []byte(text), 0o600); err != nil {
		a.t.Fatal(err)
	}
}

// StartAgent writes cfg (with {{SOCKET}}, {{NAME}} and {{DIR}} replaced)
// and starts `zguard run` on it. Cleanup stops the agent and removes every
// container carrying this test's name label.
func StartAgent(t testing.TB, name, cfg string, opt ...AgentOptions) *Agent {
	t.Helper()
	testenv.Require(t, testenv.Root, testenv.Docker)
	var o AgentOptions
	if len(opt) > 0 {
		o = opt[0]
	}
	dir := t.TempDir()
	a := &Agent{t: t, Bin: testenv.ZguardBinary(t), Dir: dir, Config: filepath.Join(dir, "config.toml"),
		Socket: filepath.Join(dir, "zguard.sock"), Name: name, log: &lockedBuffer{}, done: make(chan struct{})}
	a.WriteConfig(a.Expand(cfg))
	t.Cleanup(func() { RemoveContainers(t, name) })
	a.Start(o)
	return a
}

// Expand replaces the placeholders in a config template.
func (a *Agent) Expand(cfg string) string {
	r := strings.NewReplacer("{{SOCKET}}", a.Socket, "{{NAME}}", a.Name, "{{DIR}}", a.Dir)
	return r.Replace(cfg)
}

// Start (re)starts the agent process on the same config.
func (a *Agent) Start(o AgentOptions) {
	t := a.t
	t.Helper()
	a.cmd = exec.Command(a.Bin, "--socket", a.Socket, "run", "-c", a.Config)
	a.cmd.Stdout = a.log
	a.cmd.Stderr = a.log
	a.cmd.Env = append(os.Environ(), o.Env...)
	a.cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := a.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	a.done = make(chan struct{})
	go func(c *exec.Cmd, done chan struct{}) { _ = c.Wait(); close(done) }(a.cmd, a.done)
	t.Cleanup(func() {
		a.Stop()
		if t.Failed() {
			t.Logf("agent log:\n%s", a.log.String())
		}
	})
	if o.NoWait {
		return
	}
	WaitFor(t, 30*time.Second, "control socket", func() bool {
		_, err := a.Status()
		return err == nil
	})
}

// Stop sends SIGTERM and waits for the agent to exit.
func (a *Agent) Stop() {
	if a.cmd == nil || a.cmd.Process == nil {
		return
	}
	select {
	case <-a.done:
		return
	default:
	}
	_ = a.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-a.done:
	case <-time.After(15 * time.Second):
		_ = a.cmd.Process.Kill()
		<-a.done
	}
}

// Kill9 kills the agent with SIGKILL, as a crash would.
func (a *Agent) Kill9() {
	_ = a.cmd.Process.Kill()
	<-a.done
}

// Log returns everything the agent printed so far.
func (a *Agent) Log() string { return a.log.String() }

// Status fetches the status document through the typed client.
func (a *Agent) Status() (agent.Status, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	return agent.NewClient(a.Socket).Status(ctx)
}

// Part decodes one subsystem's part of the status into v.
func (a *Agent) Part(name string, v any) {
	a.t.Helper()
	st, err := a.Status()
	if err != nil {
		a.t.Fatalf("status: %v", err)
	}
	raw, ok := st.Parts[name]
	if !ok {
		a.t.Fatalf("status has no %q part", name)
	}
	if err := json.Unmarshal(raw, v); err != nil {
		a.t.Fatalf("decoding status.%s: %v", name, err)
	}
}

// CLI runs the zguard binary with --socket and returns stdout+stderr and the exit code.
func (a *Agent) CLI(args ...string) (string, int) {
	a.t.Helper()
	cmd := exec.Command(a.Bin, append([]string{"--socket", a.Socket}, args...)...)
	out, err := cmd.CombinedOutput()
	code := 0
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		code = ee.ExitCode()
	} else if err != nil {
		a.t.Fatal(err)
	}
	return string(out), code
}

// Container returns the container part of the status ("" ID when unreachable).
func (a *Agent) Container() supervisor.Status {
	var c supervisor.Status
	st, err := a.Status()
	if err != nil {
		return c
	}
	_ = json.Unmarshal(st.Parts["container"], &c)
	return c
}

// WaitFor polls cond every 100ms until it holds or timeout passes.
func WaitFor(t testing.TB, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		if cond() {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s", timeout, what)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// RemoveContainers force-removes every container whose name starts with
// name (the managed one and any -zguard-old or hand-made conflict).
func RemoveContainers(t testing.TB, name string) {
	cli, err := testenv.DockerClient()
	if err != nil {
		return
	}
	defer cli.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	list, err := cli.ContainerList(ctx, container.ListOptions{All: true, Filters: filters.NewArgs(filters.Arg("name", name))})
	if err != nil {
		return
	}
	for _, c := range list {
		for _, n := range c.Names {
			if strings.HasPrefix(strings.TrimPrefix(n, "/"), name) {
				_ = cli.ContainerRemove(ctx, c.ID, container.RemoveOptions{Force: true})
			}
		}
	}
}

// Inspect returns docker inspect of a container by name or ID.
func Inspect(t testing.TB, id string) container.InspectResponse {
	t.Helper()
	cli, err := testenv.DockerClient()
	if err != nil {
		t.Fatal(err)
	}
	defer cli.Close()
	ins, err := cli.ContainerInspect(context.Background(), id)
	if err != nil {
		t.Fatalf("inspecting %s: %v", id, err)
	}
	return ins
}

// HTTPGet fetches url with a short timeout and returns the status code (0 on error).
func HTTPGet(url string) int {
	c := &http.Client{Timeout: 2 * time.Second}
	resp, err := c.Get(url)
	if err != nil {
		return 0
	}
	resp.Body.Close()
	return resp.StatusCode
}

// Docker runs the docker CLI for the few operations tests do by hand, as
// an operator would.
func Docker(t testing.TB, args ...string) string {
	t.Helper()
	out, err := exec.Command("docker", args...).CombinedOutput()
	if err != nil {
		t.Fatalf("docker %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return strings.TrimSpace(string(out))
}

type lockedBuffer struct {
	mu sync.Mutex
	b  strings.Builder
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}
