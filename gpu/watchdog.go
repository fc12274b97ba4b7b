package gpu

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"sync"
	"time"

	"github.com/NVIDIA/go-nvml/pkg/nvml"

	"github.com/zguard/zguard/config"
)

// JobInterrupter stops ComfyUI work; the ComfyUI client implements it.
type JobInterrupter interface {
	// Interrupt stops the running job (ComfyUI POST /interrupt).
	Interrupt(ctx context.Context) error
	// ClearQueue drops pending jobs (ComfyUI POST /queue {"clear": true}).
	ClearQueue(ctx context.Context) error
	// RunningPrompts lists the prompt IDs ComfyUI is running (GET /queue).
	RunningPrompts(ctx context.Context) ([]string, error)
}

// ProcessKiller ends a process for good; SignalKiller is the real one.
type ProcessKiller interface {
	Kill(pid int) error
}

// ContainerLocator tells which container zguard manages; the supervisor
// implements it.
type ContainerLocator interface {
	// ContainerID is the full 64-hex ID of the managed container, "" when
	// there is none.
	ContainerID() string
}

// Deps is the watchdog's mechanism. Nil fields get real defaults.
type Deps struct {
	Log         *slog.Logger
	Now         func() time.Time
	Interrupter JobInterrupter
	Killer      ProcessKiller // default SignalKiller{}
	Locator     ContainerLocator
	// ProcRoot is where /proc is (default "/proc").
	ProcRoot string
	// NVML is the library; nil loads libnvidia-ml.so.1 (or the configured
	// nvml_library) on first use.
	NVML nvml.Interface
}

// retryInit is how often an unusable NVML is tried again (a driver may be
// installed or loaded after the agent started).
const retryInit = time.Minute

// maxActions is how many actions the status keeps.
const maxActions = 100

// jobCheckInterval is how often ComfyUI's queue is read for max_job_runtime.
const jobCheckInterval = time.Second

// Watchdog samples GPU memory and interrupts, then kills, the managed
// container's runaway GPU work before the device runs out of memory.
//
// Without NVML (no library, no driver) it stands by: the status says
// available=false and why, and the agent runs on. Enabled=false makes it
// stand down: it stops sampling and acting, and its status says disabled.
type Watchdog struct {
	d    Deps
	log  *slog.Logger
	proc procFS

	mu      sync.Mutex
	cfg     config.GPU
	applied bool
	status  Status
	changed chan struct{}

	// Owned by the Run goroutine.
	lib       nvml.Interface
	libPath   string
	libLoaded bool // dlopen succeeded once: the library cannot be swapped any more
	smp       *sampler
	lastOpen  time.Time
	states    map[int]deviceState
	pending   sync.WaitGroup     // interrupts and the XID watch in flight
	xidStop   context.CancelFunc // nil: no XID watch started
}

// New returns a watchdog; it does nothing until Apply and Run.
func New(d Deps) *Watchdog {
	if d.Log == nil {
		d.Log = slog.New(slog.DiscardHandler)
	}
	if d.Now == nil {
		d.Now = time.Now
	}
	if d.Killer == nil {
		d.Killer = SignalKiller{}
	}
	if d.ProcRoot == "" {
		d.ProcRoot = "/proc"
	}
	w := &Watchdog{
		d:       d,
		log:     d.Log,
		proc:    procFS{root: d.ProcRoot},
		changed: make(chan struct{}, 1),
		states:  map[int]deviceState{},
	}
	w.status = Status{Reason: reasonStarting, Devices: []DeviceStatus{}, Actions: []Action{}}
	return w
}

// Apply takes a new [gpu] section. It fails only on an invalid section (the
// previous one then stays); a missing GPU or driver is not an error.
func (w *Watchdog) Apply(ctx context.Context, cfg config.GPU) error {
	if err := validate(cfg); err != nil {
		return fmt.Errorf("applying gpu config: %w", err)
	}
	w.mu.Lock()
	old := w.cfg
	w.cfg = cfg
	w.applied = true
	w.status.Enabled = cfg.Enabled
	w.status.LibraryRequested = cfg.NVMLLibrary
	if !cfg.Enabled {
		w.status.Reason = "disabled in config"
		w.status.Available = false
	} else if w.status.Reason == "disabled in config" {
		w.status.Reason = reasonStarting
	}
	w.mu.Unlock()
	if old.NVMLLibrary != cfg.NVMLLibrary {
		w.log.Info("gpu config applied", "enabled", cfg.Enabled, "soft_limit", cfg.SoftLimit, "hard_limit", cfg.HardLimit,
			"nvml_library", cfg.NVMLLibrary)
	} else {
		w.log.Info("gpu config applied", "enabled", cfg.Enabled, "soft_limit", cfg.SoftLimit, "hard_limit", cfg.HardLimit)
	}
	select {
	case w.changed <- struct{}{}:
	default:
	}
	return nil
}

// validate repeats the checks that matter for safety, for callers that did
// not come through config.Parse.
func validate(c config.GPU) error {
	if !c.Enabled {
		return nil
	}
	if c.PollInterval.D() < minSleep {
		return fmt.Errorf("poll_interval %s is below %s", c.PollInterval.D(), minSleep)
	}
	if c.SoftLimit.IsZero() || c.HardLimit.IsZero() {
		return errors.New("soft_limit and hard_limit are required")
	}
	return nil
}

// Status returns a copy of the current status.
func (w *Watchdog) Status() Status {
	w.mu.Lock()
	defer w.mu.Unlock()
	s := w.status
	s.Devices = make([]DeviceStatus, len(w.status.Devices))
	for i, d := range w.status.Devices {
		d.Processes = append([]Process{}, d.Processes...)
		s.Devices[i] = d
	}
	s.Actions = append([]Action{}, w.status.Actions...)
	s.XIDEvents = append([]XIDEvent(nil), w.status.XIDEvents...)
	return s
}

// Run samples until ctx ends. NVML problems are reported in the status,
// never returned; Run returns nil when ctx is cancelled.
func (w *Watchdog) Run(ctx context.Context) error {
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		w.jobLoop(ctx)
	}()
	defer func() {
		wg.Wait()
		if w.xidStop != nil {
			w.xidStop()
		}
		w.pending.Wait()
		if w.smp != nil {
			w.smp.close()
			w.smp = nil
		}
	}()
	timer := time.NewTimer(time.Hour)
	defer timer.Stop()
	for {
		sleep := w.tick(ctx)
		timer.Reset(sleep)
		select {
		case <-ctx.Done():
			return nil
		case <-w.changed:
			if !timer.Stop() {
				select {
				case <-timer.C:
				default:
				}
			}
		case <-timer.C:
		}
	}
}

// tick does one round and returns how long to sleep before the next.
func (w *Watchdog) tick(ctx context.Context) (sleep time.Duration) {
	defer func() {
		// A bug in a round must not take the agent down.
		if r := recover(); r != nil {
			w.log.Error("gpu watchdog round panicked", "panic", r)
			sleep = time.Second
		}
	}()
	w.mu.Lock()
	cfg, applied := w.cfg, w.applied
	w.mu.Unlock()
	if !applied || !cfg.Enabled {
		// Stand down: forget what was seen, so a later enable starts
		// fresh. NVML itself stays loaded (see the package doc).
		if w.xidStop != nil {
			w.xidStop()
			w.xidStop = nil
		}
		w.states = map[int]deviceState{}
		w.mu.Lock()
		w.status.Devices = []DeviceStatus{}
		w.mu.Unlock()
		return time.Hour // woken by Apply
	}
	if w.smp == nil {
		if !w.lastOpen.IsZero() && w.d.Now().Sub(w.lastOpen) < retryInit && w.libPath == cfg.NVMLLibrary {
			return retryInit - w.d.Now().Sub(w.lastOpen)
		}
		if !w.open(cfg) {
			return retryInit
		}
	}
	if w.xidStop == nil {
		w.startXID(ctx)
	}
	w.mu.Lock()
	if w.libLoaded && w.d.NVML == nil && cfg.NVMLLibrary != w.libPath {
		w.status.Note = fmt.Sprintf("nvml_library changed to %q; the library in use (%q) stays until the agent restarts", cfg.NVMLLibrary, w.libPath)
	} else {
		w.status.Note = ""
	}
	w.mu.Unlock()
	return w.round(ctx, cfg)
}

// open loads and initializes NVML; false means it is not usable now.
func (w *Watchdog) open(cfg config.GPU) bool {
	w.lastOpen = w.d.Now()
	if w.lib == nil || (!w.libLoaded && w.d.NVML == nil && w.libPath != cfg.NVMLLibrary) {
		w.lib, w.libPath = w.d.NVML, cfg.NVMLLibrary
		if w.lib == nil {
			w.lib = nvml.New(nvml.WithLibraryPath(cfg.NVMLLibrary))
		}
	}
	smp, err := openSampler(w.lib)
	var ne *nvmlError
	notFound := errors.As(err, &ne) && ne.ret == nvml.ERROR_LIBRARY_NOT_FOUND
	if err == nil || !notFound {
		w.libLoaded = true
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	if err != nil {
		reason := err.Error()
		if notFound {
			reason = "no NVML: " + nvmlErrorString(nvml.ERROR_LIBRARY_NOT_FOUND)
			if cfg.NVMLLibrary != "" {
				if _, statErr := os.Stat(cfg.NVMLLibrary); statErr != nil {
					reason = fmt.Sprintf("no NVML: %s", statErr)
				} else {
					reason = fmt.Sprintf("no NVML: %s cannot be loaded", cfg.NVMLLibrary)
				}
			}
			w.status.InitError = ""
		} else {
			w.status.InitError = err.Error()
		}
		if w.status.Reason != reason {
			w.log.Warn("GPU watchdog off: NVML not usable", "reason", reason)
		}
		w.status.Available, w.status.Reason = false, reason
		return false
	}
	w.smp = smp
	w.status.Available, w.status.Reason, w.status.InitError = true, "", ""
	w.status.Driver = smp.driver
	w.log.Info("NVML initialized", "driver", smp.driver)
	return true
}

// startXID starts watching XID events in the background, if the library
// and devices support it.
func (w *Watchdog) startXID(ctx context.Context) {
	n, err := w.smp.count()
	var x *xidWatch
	if err == nil {
		x, err = w.smp.startXID(n)
	}
	if err != nil {
		w.mu.Lock()
		w.status.XIDWatch = "off: " + err.Error()
		w.mu.Unlock()
		w.xidStop = func() {} // unsupported: do not try every round
		return
	}
	w.mu.Lock()
	w.status.XIDWatch = "on"
	w.mu.Unlock()
	xctx, cancel := context.WithCancel(ctx)
	w.xidStop = cancel
	w.pending.Add(1)
	go func() {
		defer w.pending.Done()
		err := x.run(xctx, w.recordXID)
		if err != nil {
			w.log.Warn("XID event watch stopped", "err", err)
			w.mu.Lock()
			w.status.XIDWatch = "off: " + err.Error()
			w.mu.Unlock()
		}
	}()
}

// recordXID puts an XID event into the status and the log.
func (w *Watchdog) recordXID(dev int, xid uint64) {
	e := XIDEvent{Time: w.d.Now(), Device: dev, XID: xid, Meaning: xidMeanings[xid]}
	w.log.Warn("GPU XID error", "gpu", dev, "xid", xid, "meaning", e.Meaning)
	w.mu.Lock()
	defer w.mu.Unlock()
	w.status.XIDEvents = append(w.status.XIDEvents, e)
	if n := len(w.status.XIDEvents); n > maxActions {
		w.status.XIDEvents = append([]XIDEvent{}, w.status.XIDEvents[n-maxActions:]...)
	}
}

// round samples every selected device once, acts on the policy's
// decisions and returns the adaptive sleep.
func (w *Watchdog) round(ctx context.Context, cfg config.GPU) time.Duration {
	pol := policyFrom(cfg)
	container := ""
	if w.d.Locator != nil {
		container = w.d.Locator.ContainerID()
	}
	sleep := pol.pollInterval
	n, err := w.smp.count()
	if err != nil {
		w.mu.Lock()
		w.status.Counters.SampleErrors++
		w.status.Reason = err.Error()
		w.mu.Unlock()
		return sleep
	}
	var devices []DeviceStatus
	for _, i := range selected(cfg.Devices, n) {
		ds := w.smp.sample(i)
		now := w.d.Now()
		procs, ours := w.attribute(ds.procs, container)
		obs := observation{at: now, used: ds.used, total: ds.total, ours: len(ours) > 0, err: ds.err}
		st, dec := decide(pol, w.states[i], obs)
		switch dec.action {
		case actInterrupt:
			w.interrupt(ctx, cfg, i, ds.used, dec)
		case actKill:
			st = w.kill(pol, st, dec, i, ours, container)
		}
		w.states[i] = st
		if ds.err == nil {
			sleep = min(sleep, nextSleep(pol, st, ds.used, ds.total))
		}
		devices = append(devices, deviceStatus(ds, procs, pol, st))
	}
	w.mu.Lock()
	w.status.Counters.Samples++
	if len(devices) == 0 {
		devices = []DeviceStatus{}
	}
	for _, d := range devices {
		if d.Error != "" {
			w.status.Counters.SampleErrors++
		}
	}
	w.status.Devices = devices
	w.status.Container = container
	w.status.LastSample = w.d.Now()
	w.status.Sleep = sleep.String()
	w.status.Available, w.status.Reason = true, ""
	w.mu.Unlock()
	return sleep
}

// selected returns the device indices to watch.
func selected(sel config.GPUSelection, n int) []int {
	var out []int
	switch {
	case sel.None:
	case sel.All || len(sel.Indices) == 0:
		for i := 0; i < n; i++ {
			out = append(out, i)
		}
	default:
		for _, i := range sel.Indices {
			if i < n {
				out = append(out, i)
			}
		}
	}
	return out
}

// attribute maps NVML's processes to containers; ours lists the PIDs of
// the managed container.
func (w *Watchdog) attribute(ps []gpuProcess, container string) (procs []Process, ours []gpuProcess) {
	procs = []Process{}
	for _, p := range ps {
		cid, err := w.proc.containerOf(p.pid)
		if err != nil {
			cid = "" // the process is gone, or /proc is not readable
		}
		mine := container != "" && cid == container
		if mine {
			ours = append(ours, p)
		}
		pr := Process{PID: p.pid, Memory: p.memory, Container: cid, Ours: mine}
		if p.memory == valueNotAvailable {
			pr.Memory, pr.MemoryUnknown = 0, true
		}
		procs = append(procs, pr)
	}
	return procs, ours
}

// interrupt asks ComfyUI to stop the running job (and clear the queue when
// configured). The HTTP calls run in the background so sampling goes on.
func (w *Watchdog) interrupt(ctx context.Context, cfg config.GPU, dev int, used uint64, dec decision) {
	a := Action{Time: w.d.Now(), Action: string(actInterrupt), Device: dev, Memory: used, Reason: dec.reason}
	w.log.Warn("interrupting ComfyUI job", "gpu", dev, "reason", dec.reason)
	if w.d.Interrupter == nil {
		a.Error = "no ComfyUI client configured"
	}
	w.record(a)
	if w.d.Interrupter == nil {
		return
	}
	w.pending.Add(1)
	go func() {
		defer w.pending.Done()
		cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
		defer cancel()
		err := w.d.Interrupter.Interrupt(cctx)
		if err == nil && cfg.ClearQueue {
			err = w.d.Interrupter.ClearQueue(cctx)
		}
		if err != nil {
			w.log.Error("interrupting ComfyUI job failed", "err", err)
			w.mu.Lock()
			for k := len(w.status.Actions) - 1; k >= 0; k-- {
				if w.status.Actions[k].Time.Equal(a.Time) && w.status.Actions[k].Action == a.Action {
					w.status.Actions[k].Error = err.Error()
					break
				}
			}
			w.mu.Unlock()
		}
	}()
}

// kill re-reads the device's memory and, when the decision still holds,
// SIGKILLs the managed container's processes on that device.
func (w *Watchdog) kill(pol policy, st deviceState, dec decision, dev int, ours []gpuProcess, container string) deviceState {
	used, total, err := w.smp.memory(dev)
	now := w.d.Now()
	fresh := observation{at: now, used: used, total: total, ours: true, err: err}
	if !confirmKill(pol, st, dec, fresh) {
		reason := fmt.Sprintf("memory dropped to %s before the kill (%s)", fmtBytes(used), dec.reason)
		if err != nil {
			reason = fmt.Sprintf("memory could not be re-read before the kill: %v", err)
		}
		w.log.Info("kill called off", "gpu", dev, "reason", reason)
		w.record(Action{Time: now, Action: "kill_skipped", Device: dev, Memory: used, Reason: reason})
		return st
	}
	for _, p := range ours {
		a := Action{Time: now, Action: string(actKill), Device: dev, PID: p.pid, Memory: used, Reason: dec.reason}
		// The PID may have been reused since the sample: check again.
		if cid, err := w.proc.containerOf(p.pid); err != nil || cid != container {
			a.Action, a.Reason = "kill_skipped", fmt.Sprintf("pid %d no longer belongs to the managed container", p.pid)
			w.record(a)
			continue
		}
		w.log.Warn("killing GPU process of the managed container", "gpu", dev, "pid", p.pid, "reason", dec.reason)
		if err := w.d.Killer.Kill(p.pid); err != nil {
			a.Error = fmt.Sprintf("killing pid %d: %v", p.pid, err)
			w.log.Error("kill failed", "pid", p.pid, "err", err)
		}
		w.record(a)
	}
	return killed(st, now)
}

// record appends an action to the status, keeping the newest, and counts it.
func (w *Watchdog) record(a Action) {
	w.mu.Lock()
	defer w.mu.Unlock()
	switch a.Action {
	case string(actInterrupt):
		w.status.Counters.Interrupts++
	case string(actKill):
		w.status.Counters.Kills++
	case "kill_skipped":
		w.status.Counters.KillsSkipped++
	}
	w.status.Actions = append(w.status.Actions, a)
	if n := len(w.status.Actions); n > maxActions {
		w.status.Actions = append([]Action{}, w.status.Actions[n-maxActions:]...)
	}
}

func deviceStatus(ds deviceSample, procs []Process, pol policy, st deviceState) DeviceStatus {
	soft, hard := pol.limits(ds.total)
	d := DeviceStatus{
		Index: ds.index, Name: ds.name, UUID: ds.uuid,
		MemoryUsed: ds.used, MemoryTotal: ds.total,
		SoftLimit: soft, HardLimit: hard,
		GrowthRate: st.rate, Phase: string(st.phase), Processes: procs,
	}
	if d.Phase == "" {
		d.Phase = string(phaseIdle)
	}
	if ds.err != nil {
		d.Error = ds.err.Error()
		d.Lost = errors.Is(ds.err, errGPULost)
	}
	return d
}

// jobLoop enforces max_job_runtime by reading ComfyUI's queue.
func (w *Watchdog) jobLoop(ctx context.Context) {
	var jobs jobTracker
	t := time.NewTicker(jobCheckInterval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		w.mu.Lock()
		cfg := w.cfg
		w.mu.Unlock()
		if !cfg.Enabled || cfg.MaxJobRuntime.D() <= 0 || w.d.Interrupter == nil {
			jobs = jobTracker{}
			continue
		}
		cctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		running, err := w.d.Interrupter.RunningPrompts(cctx)
		cancel()
		if err != nil {
			w.log.Debug("reading ComfyUI queue failed", "err", err)
			continue
		}
		var overdue []string
		jobs, overdue = overdueJobs(jobs, running, w.d.Now(), cfg.MaxJobRuntime.D())
		for _, id := range overdue {
			a := Action{Time: w.d.Now(), Action: string(actInterrupt), Device: -1,
				Reason: fmt.Sprintf("job %s ran longer than max_job_runtime %s", id, cfg.MaxJobRuntime.D())}
			w.log.Warn("interrupting ComfyUI job", "prompt_id", id, "reason", a.Reason)
			cctx, cancel := context.WithTimeout(ctx, 5*time.Second)
			if err := w.d.Interrupter.Interrupt(cctx); err != nil {
				a.Error = err.Error()
			}
			cancel()
			w.record(a)
		}
	}
}
