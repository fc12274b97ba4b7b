package e2e

import (
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"syscall"
	"testing"
	"time"
)

// Registry is a docker-registry (Debian's distribution package) serving on
// 127.0.0.1, which dockerd trusts without TLS.
type Registry struct {
	t    testing.TB
	Addr string
	dir  string
	cmd  *exec.Cmd
	done chan struct{}
}

// StartRegistry runs a private registry for the test on a free port.
func StartRegistry(t testing.TB) *Registry {
	t.Helper()
	bin, err := exec.LookPath("docker-registry")
	if err != nil {
		if os.Getenv("ZGUARD_REQUIRE_PRIVILEGED") == "1" {
			t.Fatal("docker-registry not installed (apt-get install docker-registry)")
		}
		t.Skip("docker-registry not installed")
	}
	r := &Registry{t: t, dir: t.TempDir(), Addr: "127.0.0.1:" + strconv.Itoa(FreePort(t))}
	cfg := fmt.Sprintf("version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n    rootdirectory: %s\n  delete:\n    enabled: true\nhttp:\n  addr: %s\n",
		filepath.Join(r.dir, "data"), r.Addr)
	cfgPath := filepath.Join(r.dir, "zguard-test-registry.yml")
	if err := os.WriteFile(cfgPath, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	r.cmd = exec.Command(bin, "serve", cfgPath)
	r.cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	r.Start()
	t.Cleanup(r.Stop)
	return r
}

// Start (re)starts the registry process.
func (r *Registry) Start() {
	r.t.Helper()
	cmd := exec.Command(r.cmd.Path, r.cmd.Args[1:]...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		r.t.Fatal(err)
	}
	r.cmd = cmd
	r.done = make(chan struct{})
	go func(done chan struct{}) { _ = cmd.Wait(); close(done) }(r.done)
	WaitFor(r.t, 20*time.Second, "registry listening", func() bool {
		c, err := net.DialTimeout("tcp", r.Addr, time.Second)
		if err == nil {
			c.Close()
		}
		return err == nil
	})
}

// Stop kills the registry.
func (r *Registry) Stop() {
	if r.cmd == nil || r.cmd.Process == nil {
		return
	}
	select {
	case <-r.done:
		return
	default:
	}
	_ = r.cmd.Process.Kill()
	<-r.done
}

// Push pushes a local image to repo:tag in this registry and returns the
// reference the agent should use (127.0.0.1:PORT/repo:tag). The push goes
// through the name localhost:PORT: retagging the agent's own reference
// locally would race with its pulls, which retag it back.
func (r *Registry) Push(local, repoTag string) string {
	r.t.Helper()
	_, port, _ := net.SplitHostPort(r.Addr)
	via := "localhost:" + port + "/" + repoTag
	Docker(r.t, "tag", local, via)
	Docker(r.t, "push", via)
	return r.Addr + "/" + repoTag
}
