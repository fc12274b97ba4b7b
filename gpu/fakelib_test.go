package gpu

import (
	"errors"
	"testing"

	"github.com/NVIDIA/go-nvml/pkg/nvml"

	"github.com/zguard/zguard/gpu/fakenvml"
)

// TestFakeLibrary drives the sampler through go-nvml's real cgo/dlopen path
// against the fake libnvidia-ml.so.1 built from testdata/. It is one test
// with steps because a process can only bind NVML's symbols to one library.
func TestFakeLibrary(t *testing.T) {
	const gib = 1 << 30
	lib, statePath := fakenvml.Build(t, fakenvml.State{
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

	// The GPU falls off the bus.
	if err := (fakenvml.State{Devices: []fakenvml.Device{{Index: 0, Total: 80 * gib, Error: int(nvml.ERROR_GPU_IS_LOST)}}}).Write(statePath); err != nil {
		t.Fatal(err)
	}
	lost := s.sample(0)
	if !errors.Is(lost.err, errGPULost) {
		t.Errorf("lost GPU sample error = %v, want errGPULost", lost.err)
	}
}
