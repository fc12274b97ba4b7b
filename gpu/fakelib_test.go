package gpu

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	"github.com/NVIDIA/go-nvml/pkg/nvml"

	"github.com/zguard/zguard/gpu/fakenvml"
)

func TestMain(m *testing.M) {
	code := m.Run()
	fakenvml.RemoveShared()
	os.Exit(code)
}

// xidSeq numbers fake XID events. The shared fake library remembers the
// last sequence it delivered for the life of the process, so every test
// run (also under -count=N) needs fresh numbers.
var xidSeq int

func nextXIDSeq() int {
	xidSeq++
	return xidSeq
}

// TestFakeLibrary drives the sampler through go-nvml's real cgo/dlopen path
// against the fake libnvidia-ml.so.1 built from testdata/.
func TestFakeLibrary(t *testing.T) {
	const gib = 1 << 30
	lib, statePath := fakenvml.Shared(t, fakenvml.State{
		Driver: "555.42.06",
		Devices: []fakenvml.Device{
			{Index: 0, Total: 80 * gib, Used: 10 * gib, Name: "Fake H100"},
			{Index: 1, Total: 141 * gib, Used: 1 * gib, NoV2: true},
		},
		Procs: []fakenvml.Proc{{Device: 0, PID: 4242, Memory: 9 * gib}, {Device: 0, PID: 4343, Memory: -1}},
	})
	s, err := openSampler(nvml.New(nvml.WithLibraryPath(lib)))
	if err != nil {
		t.Fatalf("opening the fake library: %v", err)
	}
	defer s.close()
	if s.driver != "555.42.06" || !s.hasV2 {
		t.Errorf("driver %q, hasV2 %v; want 555.42.06, true", s.driver, s.hasV2)
	}
	n, err := s.count()
	if err != nil || n != 2 {
		t.Fatalf("count = %d, %v; want 2", n, err)
	}
	d0 := s.sample(0)
	if d0.err != nil || d0.used != 10*gib || d0.total != 80*gib || d0.name != "Fake_H100" {
		t.Errorf("GPU 0 = %+v", d0)
	}
	if len(d0.procs) != 2 || d0.procs[0] != (gpuProcess{4242, 9 * gib}) || d0.procs[1].memory != valueNotAvailable {
		t.Errorf("GPU 0 processes = %+v", d0.procs)
	}
	d1 := s.sample(1)
	if d1.err != nil || d1.total != 141*gib || !s.v1Only[1] {
		t.Errorf("GPU 1 (no v2) = %+v, v1Only %v", d1, s.v1Only[1])
	}

	// XID events arrive through an NVML event set.
	x, err := s.startXID(n)
	if err != nil {
		t.Fatalf("starting the XID watch: %v", err)
	}
	got := make(chan [2]uint64, 4)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- x.run(ctx, func(dev int, xid uint64) { got <- [2]uint64{uint64(dev), xid} }) }()
	st := fakenvml.State{
		Devices: []fakenvml.Device{{Index: 0, Total: 80 * gib, Used: 10 * gib}, {Index: 1, Total: 141 * gib, Used: 1 * gib}},
		XIDs:    []fakenvml.XID{{Device: 1, Code: 48, Seq: nextXIDSeq()}, {Device: 0, Code: 79, Seq: nextXIDSeq()}},
	}
	if err := st.Write(statePath); err != nil {
		t.Fatal(err)
	}
	for _, want := range [][2]uint64{{1, 48}, {0, 79}} {
		select {
		case ev := <-got:
			if ev != want {
				t.Errorf("XID event = %v, want %v", ev, want)
			}
		case <-time.After(5 * time.Second):
			t.Fatalf("no XID event %v", want)
		}
	}
	cancel()
	if err := <-done; err != nil {
		t.Errorf("XID watch ended with %v", err)
	}

	// The GPU falls off the bus.
	if err := (fakenvml.State{Devices: []fakenvml.Device{{Index: 0, Total: 80 * gib, Error: int(nvml.ERROR_GPU_IS_LOST)}}}).Write(statePath); err != nil {
		t.Fatal(err)
	}
	lost := s.sample(0)
	if !errors.Is(lost.err, errGPULost) {
		t.Errorf("lost GPU sample error = %v, want errGPULost", lost.err)
	}
}

// TestWatchdogThroughFakeLibrary runs the whole watchdog with Deps.NVML
// nil, so it loads the configured nvml_library itself, as the agent does.
func TestWatchdogThroughFakeLibrary(t *testing.T) {
	const gib = 1 << 30
	st := fakenvml.State{
		Devices: []fakenvml.Device{{Index: 0, Total: 80 * gib, Used: 8 * gib}},
		Procs:   []fakenvml.Proc{{Device: 0, PID: 100, Memory: 6 * gib}, {Device: 0, PID: 200, Memory: 1 * gib}},
	}
	lib, statePath := fakenvml.Shared(t, st)
	procRoot := t.TempDir()
	writeCgroup(t, procRoot, 100, ourID)
	writeCgroup(t, procRoot, 200, otherID)
	comfy, killer := &fakeComfy{}, &fakeKiller{}
	killer.onKill = func() {
		st.Devices[0].Used, st.Procs = 8*gib, st.Procs[1:]
		if err := st.Write(statePath); err != nil {
			t.Error(err)
		}
	}
	w := New(Deps{Interrupter: comfy, Killer: killer, Locator: fixedLocator(ourID), ProcRoot: procRoot})
	cfg := fastConfig()
	cfg.NVMLLibrary = lib
	r := &rig{w: w, comfy: comfy, killer: killer}
	r.start(t, cfg)
	waitFor(t, "a sample through the fake library", func() bool { return len(w.Status().Devices) == 1 })
	if s := w.Status(); !s.Available || s.Driver != "999.99.99-fake" || s.Devices[0].MemoryUsed != 8*gib {
		t.Fatalf("status = %+v", s)
	}
	// Ramp until the watchdog kills pid 100.
	for used := uint64(8 * gib); len(killer.killed()) == 0 && used < 80*gib; used += gib {
		st.Devices[0].Used = used
		st.Procs[0].Memory = int64(used) - gib
		if err := st.Write(statePath); err != nil {
			t.Fatal(err)
		}
		time.Sleep(20 * time.Millisecond)
	}
	waitFor(t, "the kill in the status", func() bool { return w.Status().Counters.Kills > 0 })
	if n, _ := comfy.count(); n != 1 {
		t.Errorf("interrupts = %d, want 1 before the kill; actions %+v", n, w.Status().Actions)
	}
	if k := killer.killed(); len(k) != 1 || k[0] != 100 {
		t.Errorf("killed %v, want [100]", k)
	}
	acts := w.Status().Actions
	if len(acts) < 2 || acts[0].Action != "interrupt" || acts[len(acts)-1].Action != "kill" {
		t.Errorf("actions = %+v", acts)
	}
	for _, a := range acts {
		if a.Action == "kill" && a.Memory >= 80*gib {
			t.Errorf("kill at %s: too late", fmtBytes(a.Memory))
		}
	}
}

func writeCgroup(t *testing.T, root string, pid int, id string) {
	t.Helper()
	dir := filepath.Join(root, strconv.Itoa(pid))
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "cgroup"), []byte("12:memory:/docker/"+id+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
}
