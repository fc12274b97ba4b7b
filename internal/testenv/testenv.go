// Package testenv gives integration tests what they need from the host
// (root, dockerd, iptables) and builds the project's binaries and the fake
// ComfyUI image once per test process.
//
// A test that cannot run skips with the reason; with
// ZGUARD_REQUIRE_PRIVILEGED=1 (set by .ci/run) it fails instead, so CI can
// never go green by skipping.
package testenv

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/docker/docker/client"
)

// Need names a host capability an integration test requires.
type Need string

// The capabilities tests can ask for.
const (
	Root     Need = "root"
	Docker   Need = "docker"
	Iptables Need = "iptables"
	Netns    Need = "netns"
	Ipset    Need = "ipset"
)

// Require skips (or, under ZGUARD_REQUIRE_PRIVILEGED=1, fails) the test
// unless every need is met.
func Require(t testing.TB, needs ...Need) {
	t.Helper()
	for _, n := range needs {
		if err := check(n); err != nil {
			msg := fmt.Sprintf("needs %s: %v", n, err)
			if os.Getenv("ZGUARD_REQUIRE_PRIVILEGED") == "1" {
				t.Fatalf("%s (ZGUARD_REQUIRE_PRIVILEGED=1 turns this skip into a failure)", msg)
			}
			t.Skip(msg)
		}
	}
}

func check(n Need) error {
	switch n {
	case Root:
		if os.Geteuid() != 0 {
			return fmt.Errorf("not running as root")
		}
	case Docker:
		if os.Geteuid() != 0 {
			return fmt.Errorf("not running as root")
		}
		cli, err := DockerClient()
		if err != nil {
			return err
		}
		defer cli.Close()
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if _, err := cli.Ping(ctx); err != nil {
			return fmt.Errorf("dockerd not reachable: %w", err)
		}
	case Iptables:
		if os.Geteuid() != 0 {
			return fmt.Errorf("not running as root")
		}
		if out, err := exec.Command("iptables", "-w", "-S", "INPUT").CombinedOutput(); err != nil {
			return fmt.Errorf("iptables not usable: %v: %s", err, strings.TrimSpace(string(out)))
		}
	case Ipset:
		if out, err := exec.Command("ipset", "list", "-n").CombinedOutput(); err != nil {
			return fmt.Errorf("ipset not usable: %v: %s", err, strings.TrimSpace(string(out)))
		}
	case Netns:
		if os.Geteuid() != 0 {
			return fmt.Errorf("not running as root")
		}
		if _, err := exec.LookPath("ip"); err != nil {
			return fmt.Errorf("ip (iproute2) not installed")
		}
	default:
		return fmt.Errorf("unknown need %q", n)
	}
	return nil
}

// DockerClient connects to dockerd the way the agent does.
func DockerClient() (*client.Client, error) {
	os.Unsetenv("DOCKER_API_VERSION")
	return client.NewClientWithOpts(client.FromEnv, client.WithAPIVersionNegotiation())
}

// RepoRoot is the repository root (where go.mod is).
func RepoRoot() string {
	_, file, _, _ := runtime.Caller(0)
	return filepath.Clean(filepath.Join(filepath.Dir(file), "..", ".."))
}

var (
	buildMu    sync.Mutex
	buildCache = map[string]string{}
	buildDir   string
)

// Binary builds ./cmd/<name> once per test process and returns its path.
// CGO stays as the environment has it (zguard needs cgo for NVML).
func Binary(t testing.TB, name string) string {
	t.Helper()
	buildMu.Lock()
	defer buildMu.Unlock()
	if p, ok := buildCache[name]; ok {
		return p
	}
	if buildDir == "" {
		d, err := os.MkdirTemp("", "zguard-testbin-")
		if err != nil {
			t.Fatal(err)
		}
		buildDir = d
	}
	out := filepath.Join(buildDir, name)
	cmd := exec.Command("go", "build", "-o", out, "./cmd/"+name)
	cmd.Dir = RepoRoot()
	cmd.Env = append(os.Environ(), "CGO_CFLAGS=-Wno-deprecated-declarations")
	if name == "fakecomfy" {
		cmd.Env = append(cmd.Env, "CGO_ENABLED=0")
	}
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("building %s: %v\n%s", name, err, b)
	}
	buildCache[name] = out
	return out
}

// ZguardBinary builds cmd/zguard once per test process.
func ZguardBinary(t testing.TB) string { return Binary(t, "zguard") }

// UniqueName returns prefix plus a short random-ish suffix, for containers,
// chains, namespaces and sets that must not collide with a parallel run.
func UniqueName(prefix string) string {
	return fmt.Sprintf("%s%d%03d", prefix, os.Getpid()%100000, time.Now().UnixNano()%1000)
}
