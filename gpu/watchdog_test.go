package gpu

import (
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/NVIDIA/go-nvml/pkg/nvml"
	"github.com/NVIDIA/go-nvml/pkg/nvml/mock/dgxh200"
	"github.com/NVIDIA/go-nvml/pkg/nvml/mock/server"

	"github.com/zguard/zguard/config"
	"github.com/zguard/zguard/health"
)

var (
	ourID   = strings.Repeat("a", 64)
	otherID = strings.Repeat("b", 64)
)

// fakeComfy records interrupts; RunningPrompts answers prompts.
type fakeComfy struct {
	mu         sync.Mutex
	interrupts int
	clears     int
	prompts    []string
}

func (f *fakeComfy) Interrupt(context.Context) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.interrupts++
	return nil
}

func (f *fakeComfy) ClearQueue(context.Context) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.clears++
	return nil
}

func (f *fakeComfy) RunningPrompts(context.Context) ([]string, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]string{}, f.prompts...), nil
}

func (f *fakeComfy) count() (int, int) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.interrupts, f.clears
}

// fakeKiller records kills and runs onKill (which frees the memory).
type fakeKiller struct {
	mu     sync.Mutex
	pids   []int
	onKill func()
}

func (k *fakeKiller) Kill(pid int) error {
	k.mu.Lock()
	k.pids = append(k.pids, pid)
	k.mu.Unlock()
	if k.onKill != nil {
		k.onKill()
	}
	return nil
}

func (k *fakeKiller) killed() []int {
	k.mu.Lock()
	defer k.mu.Unlock()
	return append([]int{}, k.pids...)
}

type fixedLocator string

func (l fixedLocator) ContainerID() string { return string(l) }

// rig is a watchdog on a one-GPU H200 mock whose memory the test sets;
// pid 100 is in the managed container, pid 200 in another one.
type rig struct {
	w        *Watchdog
	procRoot string
	used     atomic.Uint64
	reads    atomic.Int64
	comfy    *fakeComfy
	killer   *fakeKiller
}

func newRig(t *testing.T) *rig {
	t.Helper()
	procRoot := t.TempDir()
	for pid, id := range map[string]string{"100": ourID, "200": otherID} {
		if err := os.MkdirAll(filepath.Join(procRoot, pid), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(procRoot, pid, "cgroup"), []byte("0::/system.slice/docker-"+id+".scope\n"), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	r := &rig{comfy: &fakeComfy{}, killer: &fakeKiller{}, procRoot: procRoot}
	srv := dgxh200.New()
	srv.Devices = srv.Devices[:1]
	d := srv.Devices[0].(*server.Device)
	total := d.MemoryInfo.Total
	d.GetMemoryInfoFunc = func() (nvml.Memory, nvml.Return) {
		r.reads.Add(1)
		u := r.used.Load()
		return nvml.Memory{Total: total, Used: u, Free: total - u}, nvml.SUCCESS
	}
	d.GetComputeRunningProcessesFunc = func() ([]nvml.ProcessInfo, nvml.Return) {
		return []nvml.ProcessInfo{{Pid: 100, UsedGpuMemory: r.used.Load() / 2}, {Pid: 200, UsedGpuMemory: r.used.Load() / 4}}, nvml.SUCCESS
	}
	d.GetGraphicsRunningProcessesFunc = func() ([]nvml.ProcessInfo, nvml.Return) { return nil, nvml.SUCCESS }
	r.killer.onKill = func() { r.used.Store(10 * gib) }
	r.w = New(Deps{Interrupter: r.comfy, Killer: r.killer, Locator: fixedLocator(ourID), ProcRoot: procRoot, NVML: srv})
	r.used.Store(10 * gib)
	return r
}

func fastConfig() config.GPU {
	c := config.Defaults().GPU
	c.PollInterval = config.Duration(30 * time.Millisecond)
	c.Grace = config.Duration(300 * time.Millisecond)
	c.Cooldown = config.Duration(time.Second)
	c.ClearQueue = true
	return c
}

func (r *rig) start(t *testing.T, cfg config.GPU) {
	t.Helper()
	if err := r.w.Apply(context.Background(), cfg); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- r.w.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("Run returned %v", err)
			}
		case <-time.After(5 * time.Second):
			t.Error("Run did not return after cancel")
		}
	})
}

// waitFor polls cond for up to 5 seconds.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func TestWatchdogInterruptThenKillOnlyOurs(t *testing.T) {
	r := newRig(t)
	r.start(t, fastConfig())
	waitFor(t, "a first sample", func() bool { return len(r.w.Status().Devices) == 1 })
	st := r.w.Status()
	if !st.Available || st.Driver != "550.54.15" || len(st.Devices[0].Processes) != 2 {
		t.Fatalf("status = %+v", st)
	}
	for _, p := range st.Devices[0].Processes {
		if want := p.PID == 100; p.Ours != want {
			t.Errorf("process %d ours = %v, want %v", p.PID, p.Ours, want)
		}
	}

	// Over the soft limit (90% of 141 GiB) and staying there: interrupt,
	// then, after the grace period, kill pid 100 (never pid 200).
	r.used.Store(130 * gib)
	waitFor(t, "the interrupt", func() bool { n, _ := r.comfy.count(); return n == 1 })
	if _, clears := r.comfy.count(); clears != 1 {
		t.Errorf("queue cleared %d times, want 1 (clear_queue = true)", clears)
	}
	waitFor(t, "the kill", func() bool { return len(r.killer.killed()) > 0 })
	if got := r.killer.killed(); len(got) != 1 || got[0] != 100 {
		t.Errorf("killed %v, want only [100]", got)
	}
	waitFor(t, "both actions in the status", func() bool { return len(r.w.Status().Actions) >= 2 })
	acts := r.w.Status().Actions
	if acts[0].Action != "interrupt" || acts[1].Action != "kill" || acts[1].PID != 100 || acts[1].Memory != 130*gib {
		t.Errorf("actions = %+v", acts)
	}
	if n, _ := r.comfy.count(); n != 1 {
		t.Errorf("interrupts = %d, want 1", n)
	}
	b, err := json.Marshal(r.w.Status())
	if err != nil || !strings.Contains(string(b), `"available":true`) || !strings.Contains(string(b), `"memory_used"`) {
		t.Errorf("status JSON = %s, %v", b, err)
	}
}

func TestWatchdogKillCalledOffWhenMemoryDropped(t *testing.T) {
	r := newRig(t)
	// The sample sees the hard limit passed; the re-read right before the
	// kill sees the memory gone.
	var calls atomic.Int64
	srvDev := r.w.d.NVML.(*server.Server).Devices[0].(*server.Device)
	total := srvDev.MemoryInfo.Total
	srvDev.GetMemoryInfoFunc = func() (nvml.Memory, nvml.Return) {
		if calls.Add(1) == 1 {
			return nvml.Memory{Total: total, Used: total - gib}, nvml.SUCCESS
		}
		return nvml.Memory{Total: total, Used: 5 * gib}, nvml.SUCCESS
	}
	r.start(t, fastConfig())
	waitFor(t, "the called-off kill", func() bool { return r.w.Status().Counters.KillsSkipped == 1 })
	if got := r.killer.killed(); len(got) != 0 {
		t.Errorf("killed %v although memory had dropped", got)
	}
	if a := r.w.Status().Actions; len(a) != 1 || a[0].Action != "kill_skipped" {
		t.Errorf("actions = %+v", a)
	}
}

func TestWatchdogKillSkipsAReusedPID(t *testing.T) {
	r := newRig(t)
	// Between the sample and the kill, pid 100 exits and the number is
	// reused by a process of another container.
	var calls atomic.Int64
	d := r.w.d.NVML.(*server.Server).Devices[0].(*server.Device)
	total := d.MemoryInfo.Total
	d.GetMemoryInfoFunc = func() (nvml.Memory, nvml.Return) {
		if calls.Add(1) == 2 {
			writeCgroup(t, r.procRoot, 100, otherID)
		}
		return nvml.Memory{Total: total, Used: total - gib}, nvml.SUCCESS
	}
	r.start(t, fastConfig())
	waitFor(t, "the skipped kill", func() bool { return r.w.Status().Counters.KillsSkipped >= 1 })
	if got := r.killer.killed(); len(got) != 0 {
		t.Errorf("killed %v: a reused pid of another container", got)
	}
	if a := r.w.Status().Actions; len(a) == 0 || !strings.Contains(a[0].Reason, "no longer belongs") {
		t.Errorf("actions = %+v", a)
	}
}

func TestWatchdogNoLibrary(t *testing.T) {
	w := New(Deps{})
	cfg := config.Defaults().GPU
	cfg.NVMLLibrary = "/nonexistent/libnvidia-ml.so.1"
	if err := w.Apply(context.Background(), cfg); err != nil {
		t.Fatalf("Apply without NVML = %v, want nil", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- w.Run(ctx) }()
	waitFor(t, "the NVML verdict", func() bool { return w.Status().Reason != reasonStarting })
	st := w.Status()
	if st.Available || !strings.Contains(st.Reason, "no NVML") {
		t.Errorf("status = %+v, want available=false with the reason", st)
	}
	if fs := st.Findings(); len(fs) != 1 || fs[0].Level != health.Warning {
		t.Errorf("findings for an explicitly configured, missing library = %+v, want one warning", fs)
	}
	// With the system's default library missing it is a plain fact.
	st.LibraryRequested = ""
	if fs := st.Findings(); len(fs) != 0 {
		t.Errorf("findings without NVML = %+v, want none", fs)
	}
	cancel()
	if err := <-done; err != nil {
		t.Errorf("Run = %v", err)
	}
}

func TestWatchdogDisabledStandsDown(t *testing.T) {
	r := newRig(t)
	r.start(t, fastConfig())
	waitFor(t, "sampling", func() bool { return r.reads.Load() > 2 })
	cfg := fastConfig()
	cfg.Enabled = false
	if err := r.w.Apply(context.Background(), cfg); err != nil {
		t.Fatal(err)
	}
	time.Sleep(100 * time.Millisecond)
	before := r.reads.Load()
	r.used.Store(140 * gib)
	time.Sleep(200 * time.Millisecond)
	if after := r.reads.Load(); after != before {
		t.Errorf("disabled watchdog still sampled (%d -> %d reads)", before, after)
	}
	if st := r.w.Status(); st.Enabled || st.Available || len(st.Findings()) != 0 || len(r.killer.killed()) != 0 {
		t.Errorf("disabled status = %+v, kills %v", st, r.killer.killed())
	}
	// Enabled again, it picks up where the GPU is now.
	r.used.Store(10 * gib)
	if err := r.w.Apply(context.Background(), fastConfig()); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "sampling again", func() bool {
		st := r.w.Status()
		return st.Available && len(st.Devices) == 1 && st.Devices[0].MemoryUsed == 10*gib
	})
}

func TestWatchdogLostGPUIsCritical(t *testing.T) {
	r := newRig(t)
	d := r.w.d.NVML.(*server.Server).Devices[0].(*server.Device)
	d.GetMemoryInfoFunc = func() (nvml.Memory, nvml.Return) { return nvml.Memory{}, nvml.ERROR_GPU_IS_LOST }
	r.start(t, fastConfig())
	waitFor(t, "the lost GPU", func() bool { s := r.w.Status(); return len(s.Devices) == 1 && s.Devices[0].Lost })
	fs := r.w.Status().Findings()
	if health.Worst(fs) != health.Critical {
		t.Errorf("findings = %+v, want critical", fs)
	}
}

func TestWatchdogMaxJobRuntime(t *testing.T) {
	r := newRig(t)
	r.comfy.prompts = []string{"p1"}
	cfg := fastConfig()
	cfg.MaxJobRuntime = config.Duration(500 * time.Millisecond)
	r.start(t, cfg)
	waitFor(t, "the runtime interrupt", func() bool { n, _ := r.comfy.count(); return n == 1 })
	time.Sleep(1200 * time.Millisecond)
	if n, _ := r.comfy.count(); n != 1 {
		t.Errorf("interrupts = %d, want exactly 1 for one overlong job", n)
	}
	if a := r.w.Status().Actions; len(a) != 1 || !strings.Contains(a[0].Reason, "p1") {
		t.Errorf("actions = %+v", a)
	}
}

func TestApplyRejectsInvalid(t *testing.T) {
	w := New(Deps{})
	good := config.Defaults().GPU
	if err := w.Apply(context.Background(), good); err != nil {
		t.Fatal(err)
	}
	bad := good
	bad.PollInterval = config.Duration(time.Millisecond)
	if err := w.Apply(context.Background(), bad); err == nil {
		t.Error("Apply accepted a 1ms poll interval")
	}
	if w.cfg.PollInterval != good.PollInterval {
		t.Error("a rejected Apply changed the config in force")
	}
}

func TestXIDFindings(t *testing.T) {
	now := time.Date(2026, 1, 1, 12, 0, 0, 0, time.UTC)
	cases := map[string]struct {
		ev   XIDEvent
		want health.Level
	}{
		"fallen off the bus is critical":     {XIDEvent{Time: now, XID: 79}, health.Critical},
		"uncontained ECC error is a warning": {XIDEvent{Time: now, XID: 95}, health.Warning},
		"an application fault is recorded":   {XIDEvent{Time: now, XID: 13}, health.OK},
		"an old XID no longer counts":        {XIDEvent{Time: now.Add(-2 * time.Hour), XID: 79}, health.OK},
	}
	for name, tc := range cases {
		t.Run(name, func(t *testing.T) {
			st := Status{Enabled: true, Available: true, LastSample: now, XIDEvents: []XIDEvent{tc.ev}}
			if got := health.Worst(st.Findings()); got != tc.want {
				t.Errorf("worst finding = %s, want %s", got, tc.want)
			}
		})
	}
}
