package testenv

import (
	"context"
	"errors"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// DockerdPidFile is where dockerd writes its pid.
const DockerdPidFile = "/var/run/docker.pid"

// DockerdLog is where StartDockerd sends dockerd's output.
const DockerdLog = "/var/log/dockerd-test.log"

var dockerdMu sync.Mutex

// dockerdPid returns the pid of the running dockerd, or 0.
func dockerdPid() int {
	b, err := os.ReadFile(DockerdPidFile)
	if err != nil {
		return 0
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil || pid <= 0 {
		return 0
	}
	if err := syscall.Kill(pid, 0); err != nil {
		return 0
	}
	return pid
}

// StopDockerd sends SIGTERM to the running dockerd and waits (up to 60 s)
// until it is gone. It registers a cleanup that starts dockerd again if the
// test has not, so a failing test never leaves the host without Docker.
// Containers without a restart policy stop with the daemon (no live-restore).
func StopDockerd(t testing.TB) {
	t.Helper()
	Require(t, Root, Docker)
	dockerdMu.Lock()
	defer dockerdMu.Unlock()
	t.Cleanup(func() {
		if dockerdPid() == 0 {
			StartDockerd(t)
		}
	})
	if err := stopDockerd(60 * time.Second); err != nil {
		t.Fatalf("stopping dockerd: %v", err)
	}
}

func stopDockerd(timeout time.Duration) error {
	pid := dockerdPid()
	if pid == 0 {
		return nil
	}
	if err := syscall.Kill(pid, syscall.SIGTERM); err != nil {
		return err
	}
	deadline := time.Now().Add(timeout)
	for time.Now().Before(deadline) {
		if syscall.Kill(pid, 0) != nil {
			return nil
		}
		time.Sleep(100 * time.Millisecond)
	}
	return errors.New("dockerd still running after SIGTERM")
}

// StartDockerd starts dockerd detached (its own session, output appended to
// DockerdLog) unless one is running, and waits (up to 60 s) until it
// answers a ping.
func StartDockerd(t testing.TB) {
	t.Helper()
	StartDockerdWith(t)
}

// StartDockerdWith is StartDockerd with extra dockerd flags (for example
// "--live-restore").
func StartDockerdWith(t testing.TB, args ...string) {
	t.Helper()
	Require(t, Root)
	if err := startDockerd(60*time.Second, args...); err != nil {
		t.Fatalf("starting dockerd: %v", err)
	}
}

func startDockerd(timeout time.Duration, args ...string) error {
	if dockerdPid() == 0 {
		log, err := os.OpenFile(DockerdLog, os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o644)
		if err != nil {
			return err
		}
		defer log.Close()
		cmd := exec.Command("dockerd", args...)
		cmd.Stdout, cmd.Stderr = log, log
		cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
		if err := cmd.Start(); err != nil {
			return err
		}
		go func() { _ = cmd.Wait() }() // reap it if it exits while we run
	}
	cli, err := DockerClient()
	if err != nil {
		return err
	}
	defer cli.Close()
	deadline := time.Now().Add(timeout)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		_, err := cli.Ping(ctx)
		cancel()
		if err == nil {
			return nil
		}
		if time.Now().After(deadline) {
			return errors.New("dockerd did not answer within the timeout (see " + DockerdLog + "): " + err.Error())
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// RestartDockerd stops and starts dockerd.
func RestartDockerd(t testing.TB) {
	t.Helper()
	StopDockerd(t)
	StartDockerd(t)
}

// RequireDockerdRestart gates tests that stop the host's dockerd, which
// stops every container on the host that is not under live-restore. They
// run in CI (ZGUARD_REQUIRE_PRIVILEGED=1, packages one at a time) or when
// ZGUARD_TEST_DOCKERD_RESTART=1; elsewhere they skip with the reason.
func RequireDockerdRestart(t testing.TB) {
	t.Helper()
	if os.Getenv("ZGUARD_REQUIRE_PRIVILEGED") != "1" && os.Getenv("ZGUARD_TEST_DOCKERD_RESTART") != "1" {
		t.Skip("restarts dockerd (stops all containers on this host); set ZGUARD_TEST_DOCKERD_RESTART=1 to run it")
	}
	Require(t, Root, Docker)
}
