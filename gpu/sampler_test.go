package gpu

import (
	"errors"
	"testing"

	"github.com/NVIDIA/go-nvml/pkg/nvml"
	"github.com/NVIDIA/go-nvml/pkg/nvml/mock"
	"github.com/NVIDIA/go-nvml/pkg/nvml/mock/dgxh200"
	"github.com/NVIDIA/go-nvml/pkg/nvml/mock/server"
)

// h200 returns go-nvml's whole-server DGX H200 mock (8 x 141 GB) with
// processes on GPU 0. Its devices have no GetMemoryInfo_v2 (the mock
// panics when it is called), which exercises the v1 fallback.
func h200(t *testing.T) *server.Server {
	t.Helper()
	srv := dgxh200.New()
	d0 := srv.Devices[0].(*server.Device)
	d0.MemoryInfo.Used = 100 * gib
	d0.GetComputeRunningProcessesFunc = func() ([]nvml.ProcessInfo, nvml.Return) {
		return []nvml.ProcessInfo{{Pid: 10, UsedGpuMemory: 60 * gib}, {Pid: 11, UsedGpuMemory: uint64(valueNotAvailable)}}, nvml.SUCCESS
	}
	d0.GetGraphicsRunningProcessesFunc = func() ([]nvml.ProcessInfo, nvml.Return) {
		return []nvml.ProcessInfo{{Pid: 10, UsedGpuMemory: 1 * gib}, {Pid: 12, UsedGpuMemory: 1 << 50}}, nvml.SUCCESS
	}
	for _, d := range srv.Devices[1:] {
		d := d.(*server.Device)
		d.GetComputeRunningProcessesFunc = func() ([]nvml.ProcessInfo, nvml.Return) { return nil, nvml.SUCCESS }
		d.GetGraphicsRunningProcessesFunc = func() ([]nvml.ProcessInfo, nvml.Return) { return nil, nvml.ERROR_NOT_SUPPORTED }
	}
	return srv
}

func TestSamplerDGXH200(t *testing.T) {
	srv := h200(t)
	s, err := openSampler(srv)
	if err != nil {
		t.Fatal(err)
	}
	if s.driver != "550.54.15" {
		t.Errorf("driver = %q", s.driver)
	}
	n, err := s.count()
	if err != nil || n != 8 {
		t.Fatalf("count = %d, %v; want 8", n, err)
	}
	d0 := s.sample(0)
	if d0.err != nil {
		t.Fatalf("sample(0): %v", d0.err)
	}
	if d0.total != 144384<<20 || d0.used != 100*gib || d0.name != "NVIDIA H200 141GB HBM3e" || d0.uuid == "" {
		t.Errorf("GPU 0 = %+v", d0)
	}
	if !s.v1Only[0] {
		t.Error("v2 is missing on the mock, yet the sampler did not fall back to v1")
	}
	want := []gpuProcess{{10, 60 * gib}, {11, valueNotAvailable}, {12, valueNotAvailable}}
	if len(d0.procs) != len(want) {
		t.Fatalf("processes = %+v, want %+v", d0.procs, want)
	}
	for i := range want {
		if d0.procs[i] != want[i] {
			t.Errorf("process %d = %+v, want %+v (merged by pid; garbage sizes are unknown)", i, d0.procs[i], want[i])
		}
	}
	d7 := s.sample(7)
	if d7.err != nil || len(d7.procs) != 0 {
		t.Errorf("GPU 7 (graphics not supported) = %+v", d7)
	}
}

func TestSamplerMemoryV2Preferred(t *testing.T) {
	srv := h200(t)
	d0 := srv.Devices[0].(*server.Device)
	d0.GetMemoryInfo_v2Func = func() (nvml.Memory_v2, nvml.Return) {
		return nvml.Memory_v2{Total: 141 * gib, Used: 99 * gib, Reserved: gib}, nvml.SUCCESS
	}
	s, err := openSampler(srv)
	if err != nil {
		t.Fatal(err)
	}
	used, total, err := s.memory(0)
	if err != nil || used != 99*gib || total != 141*gib || s.v1Only[0] {
		t.Errorf("memory = %d, %d, %v (v1Only %v); want v2's 99 GiB of 141 GiB", used, total, err, s.v1Only[0])
	}
}

func TestSamplerErrors(t *testing.T) {
	cases := map[string]struct {
		mem      func() (nvml.Memory, nvml.Return)
		procs    func() ([]nvml.ProcessInfo, nvml.Return)
		wantLost bool
		wantErr  bool
	}{
		"GPU lost on memory": {
			mem:      func() (nvml.Memory, nvml.Return) { return nvml.Memory{}, nvml.ERROR_GPU_IS_LOST },
			wantLost: true, wantErr: true,
		},
		"GPU lost on processes": {
			procs:    func() ([]nvml.ProcessInfo, nvml.Return) { return nil, nvml.ERROR_GPU_IS_LOST },
			wantLost: true, wantErr: true,
		},
		"unknown error": {
			mem:     func() (nvml.Memory, nvml.Return) { return nvml.Memory{}, nvml.ERROR_UNKNOWN },
			wantErr: true,
		},
		"library panics": {
			mem:     func() (nvml.Memory, nvml.Return) { panic("boom") },
			wantErr: true,
		},
	}
	for name, tc := range cases {
		t.Run(name, func(t *testing.T) {
			srv := h200(t)
			d0 := srv.Devices[0].(*server.Device)
			if tc.mem != nil {
				d0.GetMemoryInfoFunc = tc.mem
			}
			if tc.procs != nil {
				d0.GetComputeRunningProcessesFunc = tc.procs
			}
			s, err := openSampler(srv)
			if err != nil {
				t.Fatal(err)
			}
			ds := s.sample(0)
			if (ds.err != nil) != tc.wantErr || errors.Is(ds.err, errGPULost) != tc.wantLost {
				t.Errorf("sample error = %v; want error %v, lost %v", ds.err, tc.wantErr, tc.wantLost)
			}
		})
	}
}

func TestSamplerNoLibrary(t *testing.T) {
	lib := &mock.Interface{InitFunc: func() nvml.Return { return nvml.ERROR_LIBRARY_NOT_FOUND }}
	_, err := openSampler(lib)
	var ne *nvmlError
	if !errors.As(err, &ne) || ne.ret != nvml.ERROR_LIBRARY_NOT_FOUND {
		t.Fatalf("openSampler = %v, want LIBRARY_NOT_FOUND", err)
	}
	// The real library loader, pointed at nothing, says the same.
	_, err = openSampler(nvml.New(nvml.WithLibraryPath("/nonexistent/libnvidia-ml.so.1")))
	if !errors.As(err, &ne) || ne.ret != nvml.ERROR_LIBRARY_NOT_FOUND {
		t.Fatalf("openSampler(real, missing) = %v, want LIBRARY_NOT_FOUND", err)
	}
}
