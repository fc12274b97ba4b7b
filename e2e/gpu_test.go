package e2e

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/zguard/zguard/comfy/fakecomfy"
	"github.com/zguard/zguard/gpu"
	"github.com/zguard/zguard/gpu/fakenvml"
	"github.com/zguard/zguard/internal/testenv"
)

// gpuConfig is a container config with the GPU watchdog on.
func gpuConfig(image string, port int, gpuSection string) string {
	return agentConfig(image, port, "", "[gpu]\n"+gpuSection)
}

// fakeStats reads the fake ComfyUI's interrupt counter.
func fakeStats(t *testing.T, port int) (interrupts int, ok bool) {
	t.Helper()
	st, err := fakecomfy.ReadStats(fmt.Sprintf("http://127.0.0.1:%d", port))
	return st.Interrupts, err == nil
}

func gpuStatus(a *Agent) gpu.Status {
	var g gpu.Status
	a.Part("gpu", &g)
	return g
}

// TestGPUWatchdogInterruptsThenKills runs the real agent with nvml_library
// pointing at the fake libnvidia-ml.so.1 (built here from C) and a real
// fake-ComfyUI container. The fake GPU's memory is made to ramp with the
// container's real host PID as its consumer: zguard must interrupt the job
// on ComfyUI, then SIGKILL that PID when memory keeps rising; the
// supervisor restarts the container; the status shows both actions.
func TestGPUWatchdogInterruptsThenKills(t *testing.T) {
	testenv.Require(t, testenv.Root, testenv.Docker)
	const gib = 1 << 30
	state := fakenvml.State{Devices: []fakenvml.Device{{Index: 0, Total: 80 * gib, Used: 8 * gib, Name: "Fake H100"}}}
	lib, statePath := fakenvml.Build(t, t.TempDir(), state)
	img := fakeImage(t)
	port := FreePort(t)
	a := StartAgent(t, testenv.UniqueName("zg-e2e-gpu-"), gpuConfig(img, port, fmt.Sprintf(`
enabled = true
nvml_library = %q
poll_interval = "100ms"
soft_limit = "90%%"
hard_limit = "97%%"
grace = "1s"
predict = "2s"
cooldown = "3s"
`, lib)))
	c := waitRunning(t, a)
	pid := Inspect(t, c.ID).State.Pid
	if pid <= 1 {
		t.Fatalf("container %s has host pid %d", c.ID, pid)
	}
	before, ok := fakeStats(t, port)
	if !ok {
		t.Fatal("fake ComfyUI /fake/stats not reachable")
	}

	// The container's process appears on the GPU and is attributed to it.
	state.Procs = []fakenvml.Proc{{Device: 0, PID: pid, Memory: 6 * gib}}
	write := func() {
		if err := state.Write(statePath); err != nil {
			t.Fatal(err)
		}
	}
	write()
	WaitFor(t, 20*time.Second, "the container's GPU process in the status", func() bool {
		g := gpuStatus(a)
		if !g.Available || len(g.Devices) != 1 || len(g.Devices[0].Processes) != 1 {
			return false
		}
		p := g.Devices[0].Processes[0]
		return p.PID == pid && p.Ours && p.Container == c.ID
	})

	// Memory ramps past the soft limit (72 GiB): zguard interrupts the job
	// on ComfyUI, which the fake counts (read it now: the counters go with
	// the process).
	for used := uint64(70 * gib); used <= 74*gib; used += gib / 2 {
		state.Devices[0].Used, state.Procs[0].Memory = used, int64(used)-2*gib
		write()
		time.Sleep(100 * time.Millisecond)
	}
	WaitFor(t, 10*time.Second, "the interrupt to reach the fake ComfyUI", func() bool {
		n, ok := fakeStats(t, port)
		return ok && n > before
	})

	// The job ignores the interrupt and memory keeps rising: after the 1s
	// grace zguard kills the container's process.
	used := uint64(74 * gib)
	killed := false
	for deadline := time.Now().Add(30 * time.Second); !killed && time.Now().Before(deadline); {
		if used < 77*gib {
			used += gib / 8
		}
		state.Devices[0].Used, state.Procs[0].Memory = used, int64(used)-2*gib
		write()
		time.Sleep(100 * time.Millisecond)
		for _, act := range gpuStatus(a).Actions {
			if act.Action == "kill" && act.PID == pid {
				killed = true
			}
		}
	}
	if !killed {
		t.Fatalf("no kill of pid %d; gpu status %+v", pid, gpuStatus(a))
	}
	// The process is gone, and its memory with it.
	state.Devices[0].Used, state.Procs = 8*gib, nil
	write()

	g := gpuStatus(a)
	if len(g.Actions) < 2 || g.Actions[0].Action != "interrupt" || g.Actions[0].Error != "" {
		t.Errorf("actions = %+v, want a successful interrupt first, then the kill", g.Actions)
	}
	for _, act := range g.Actions {
		if act.Action == "kill" && act.Error != "" {
			t.Errorf("kill failed: %+v", act)
		}
	}
	if g.Counters.Interrupts < 1 || g.Counters.Kills < 1 {
		t.Errorf("counters = %+v", g.Counters)
	}

	// The supervisor restarts the container: a new process answers.
	WaitFor(t, 60*time.Second, "the container restarted after the kill", func() bool {
		c2 := a.Container()
		if c2.State != "running" || c2.Health != "healthy" {
			return false
		}
		newPID := Inspect(t, c2.ID).State.Pid
		_, answers := fakeStats(t, port)
		return newPID > 0 && newPID != pid && answers
	})
	c2 := a.Container()
	if c2.Restarts < 1 && c2.ID == c.ID {
		t.Errorf("container status after kill = %+v, want a restart", c2)
	}
	if len(c2.LastExits) == 0 || c2.LastExits[len(c2.LastExits)-1].Code != 137 {
		t.Errorf("last exits = %+v, want the SIGKILL's 137", c2.LastExits)
	}
	// Both actions are still in the status after the restart.
	if g := gpuStatus(a); len(g.Actions) < 2 || g.XIDWatch != "on" {
		t.Errorf("after the restart: actions %+v, xid_watch %q", g.Actions, g.XIDWatch)
	}

	// The GPU falls off the bus (XID 79): reported, and critical.
	state.XIDs = []fakenvml.XID{{Device: 0, Code: 79, Seq: 1}}
	write()
	WaitFor(t, 20*time.Second, "XID 79 in the status", func() bool {
		for _, e := range gpuStatus(a).XIDEvents {
			if e.XID == 79 && e.Device == 0 {
				return true
			}
		}
		return false
	})
	if out, code := a.CLI("status"); code != 2 {
		t.Errorf("zguard status after XID 79 exited %d, want 2 (CRITICAL):\n%s", code, out)
	}
}

// TestGPUWatchdogWithoutNVML runs the agent with the watchdog on and no
// NVML library on the machine: the agent runs, the container with it, and
// the GPU status says available=false with the reason, without a finding.
func TestGPUWatchdogWithoutNVML(t *testing.T) {
	testenv.Require(t, testenv.Root, testenv.Docker)
	img := fakeImage(t)
	port := FreePort(t)
	a := StartAgent(t, testenv.UniqueName("zg-e2e-nogpu-"), gpuConfig(img, port, "enabled = true"))
	waitRunning(t, a)
	var g gpu.Status
	WaitFor(t, 20*time.Second, "the GPU verdict", func() bool {
		g = gpuStatus(a)
		return g.Reason != "" && !strings.Contains(g.Reason, "not started")
	})
	if g.Available {
		t.Skip("this machine has a working NVML; the no-GPU case cannot be shown here")
	}
	if !g.Enabled || !strings.Contains(g.Reason, "NVML") {
		t.Errorf("gpu status = %+v, want enabled, available=false and the reason", g)
	}
	if fs := g.Findings(); len(fs) != 0 {
		t.Errorf("findings without NVML = %+v, want none", fs)
	}
	out, code := a.CLI("status", "--json")
	if !strings.Contains(out, `"available": false`) && !strings.Contains(out, `"available":false`) {
		t.Errorf("zguard status --json (exit %d) lacks gpu available=false:\n%s", code, out)
	}
}
