package gpu

import (
	"errors"
	"fmt"

	"github.com/NVIDIA/go-nvml/pkg/nvml"
)

// This file is the sampling mechanism: NVML calls, and nothing else.

// valueNotAvailable is NVML_VALUE_NOT_AVAILABLE as an unsigned long long.
const valueNotAvailable = ^uint64(0)

// errGPULost marks a device that fell off the bus (XID 79).
var errGPULost = errors.New("GPU is lost (fallen off the bus or otherwise inaccessible)")

// nvmlError wraps an NVML return code with what was being done.
type nvmlError struct {
	op  string
	ret nvml.Return
}

func (e *nvmlError) Error() string { return fmt.Sprintf("%s: %s", e.op, nvmlErrorString(e.ret)) }

// Unwrap makes errors.Is(err, errGPULost) work for lost devices.
func (e *nvmlError) Unwrap() error {
	if e.ret == nvml.ERROR_GPU_IS_LOST {
		return errGPULost
	}
	return nil
}

// nvmlErrorString never calls into a library that may be gone: go-nvml's
// Return.Error asks the loaded library, whose symbol may be missing.
func nvmlErrorString(r nvml.Return) string {
	switch r {
	case nvml.ERROR_UNINITIALIZED:
		return "NVML not initialized"
	case nvml.ERROR_INVALID_ARGUMENT:
		return "invalid argument"
	case nvml.ERROR_NOT_SUPPORTED:
		return "not supported"
	case nvml.ERROR_NO_PERMISSION:
		return "no permission"
	case nvml.ERROR_NOT_FOUND:
		return "not found"
	case nvml.ERROR_INSUFFICIENT_SIZE:
		return "insufficient size"
	case nvml.ERROR_DRIVER_NOT_LOADED:
		return "NVIDIA driver not loaded"
	case nvml.ERROR_TIMEOUT:
		return "timeout"
	case nvml.ERROR_LIBRARY_NOT_FOUND:
		return "NVML library (libnvidia-ml.so.1) not found"
	case nvml.ERROR_FUNCTION_NOT_FOUND:
		return "function not found in the NVML library"
	case nvml.ERROR_GPU_IS_LOST:
		return "GPU is lost"
	case nvml.ERROR_RESET_REQUIRED:
		return "GPU reset required"
	case nvml.ERROR_ARGUMENT_VERSION_MISMATCH:
		return "argument version mismatch"
	}
	return fmt.Sprintf("NVML error %d", int(r))
}

func check(op string, ret nvml.Return) error {
	if ret == nvml.SUCCESS {
		return nil
	}
	return &nvmlError{op: op, ret: ret}
}

// gpuProcess is one process NVML reports on a device.
type gpuProcess struct {
	pid    int
	memory uint64 // valueNotAvailable when NVML does not know
}

// deviceSample is one reading of one device.
type deviceSample struct {
	index  int
	name   string
	uuid   string
	used   uint64
	total  uint64
	procs  []gpuProcess
	err    error // non-nil: the reading failed (errGPULost when the GPU is gone)
	memErr error // memory could not be read (implies err)
}

// sampler reads devices through an nvml.Interface. It never lets a panic
// from the library (or a mock) escape: every call goes through guard.
type sampler struct {
	lib     nvml.Interface
	hasV2   bool         // nvmlDeviceGetMemoryInfo_v2 exists in the library
	v1Only  map[int]bool // devices where v2 failed once; use v1 from then on
	handles map[int]nvml.Device
	names   map[int][2]string // name, uuid (fixed for a device's life)
	driver  string
}

// guard turns a panic inside an NVML call into an error.
func guard(op string, f func() error) (err error) {
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("%s: NVML call panicked: %v", op, r)
		}
	}()
	return f()
}

// openSampler initializes NVML. The error says why NVML cannot be used
// (no library, no driver); the caller reports it and runs on without.
func openSampler(lib nvml.Interface) (*sampler, error) {
	s := &sampler{lib: lib, v1Only: map[int]bool{}, handles: map[int]nvml.Device{}, names: map[int][2]string{}}
	err := guard("initializing NVML", func() error { return check("initializing NVML", lib.Init()) })
	if err != nil {
		return nil, err
	}
	_ = guard("looking up nvmlDeviceGetMemoryInfo_v2", func() error {
		s.hasV2 = lib.Extensions().LookupSymbol("nvmlDeviceGetMemoryInfo_v2") == nil
		return nil
	})
	_ = guard("reading the driver version", func() error {
		v, ret := lib.SystemGetDriverVersion()
		if ret == nvml.SUCCESS {
			s.driver = v
		}
		return nil
	})
	return s, nil
}

// close shuts NVML down.
func (s *sampler) close() {
	_ = guard("shutting NVML down", func() error { return check("shutting NVML down", s.lib.Shutdown()) })
}

// count returns the number of devices.
func (s *sampler) count() (int, error) {
	var n int
	err := guard("counting devices", func() error {
		var ret nvml.Return
		n, ret = s.lib.DeviceGetCount()
		return check("counting devices", ret)
	})
	return n, err
}

func (s *sampler) handle(i int) (nvml.Device, error) {
	if h, ok := s.handles[i]; ok {
		return h, nil
	}
	var h nvml.Device
	err := guard("getting device handle", func() error {
		var ret nvml.Return
		h, ret = s.lib.DeviceGetHandleByIndex(i)
		return check(fmt.Sprintf("getting handle of GPU %d", i), ret)
	})
	if err != nil {
		return nil, err
	}
	s.handles[i] = h
	return h, nil
}

// memory reads used and total memory of device i, preferring
// GetMemoryInfo_v2 (whose "used" excludes memory reserved by the driver)
// and falling back to v1 when the library or device lacks it.
func (s *sampler) memory(i int) (used, total uint64, err error) {
	h, err := s.handle(i)
	if err != nil {
		return 0, 0, err
	}
	if s.hasV2 && !s.v1Only[i] {
		err = guard("reading memory (v2)", func() error {
			m, ret := h.GetMemoryInfo_v2()
			if ret == nvml.SUCCESS {
				used, total = m.Used, m.Total
			}
			return check(fmt.Sprintf("reading memory of GPU %d (v2)", i), ret)
		})
		if err == nil {
			return used, total, nil
		}
		if errors.Is(err, errGPULost) {
			return 0, 0, err
		}
		s.v1Only[i] = true
	}
	err = guard("reading memory", func() error {
		m, ret := h.GetMemoryInfo()
		if ret == nvml.SUCCESS {
			used, total = m.Used, m.Total
		}
		return check(fmt.Sprintf("reading memory of GPU %d", i), ret)
	})
	return used, total, err
}

// processes lists compute and graphics processes on device i, merged by
// PID. Per-process memory NVML cannot tell (VALUE_NOT_AVAILABLE, or the
// garbage some 535 drivers return) is reported as unknown.
func (s *sampler) processes(i int, total uint64) ([]gpuProcess, error) {
	h, err := s.handle(i)
	if err != nil {
		return nil, err
	}
	byPID := map[int]int{}
	var out []gpuProcess
	add := func(infos []nvml.ProcessInfo) {
		for _, p := range infos {
			mem := p.UsedGpuMemory
			if total > 0 && mem > total {
				mem = valueNotAvailable
			}
			if k, ok := byPID[int(p.Pid)]; ok {
				if out[k].memory == valueNotAvailable || (mem != valueNotAvailable && mem > out[k].memory) {
					out[k].memory = mem
				}
				continue
			}
			byPID[int(p.Pid)] = len(out)
			out = append(out, gpuProcess{pid: int(p.Pid), memory: mem})
		}
	}
	err = guard("listing compute processes", func() error {
		infos, ret := h.GetComputeRunningProcesses()
		add(infos)
		return check(fmt.Sprintf("listing compute processes on GPU %d", i), ret)
	})
	if err != nil {
		return nil, err
	}
	// Graphics processes are rare on a ComfyUI server; a device that does
	// not support the query is not an error.
	gerr := guard("listing graphics processes", func() error {
		infos, ret := h.GetGraphicsRunningProcesses()
		add(infos)
		return check(fmt.Sprintf("listing graphics processes on GPU %d", i), ret)
	})
	if errors.Is(gerr, errGPULost) {
		return nil, gerr
	}
	return out, nil
}

// identity returns the device's name and UUID, cached after the first
// successful read.
func (s *sampler) identity(i int) (name, uuid string) {
	if v, ok := s.names[i]; ok {
		return v[0], v[1]
	}
	h, err := s.handle(i)
	if err != nil {
		return "", ""
	}
	var nerr, uerr error
	nerr = guard("reading name", func() error {
		var ret nvml.Return
		name, ret = h.GetName()
		return check("reading name", ret)
	})
	uerr = guard("reading UUID", func() error {
		var ret nvml.Return
		uuid, ret = h.GetUUID()
		return check("reading UUID", ret)
	})
	if nerr == nil && uerr == nil {
		s.names[i] = [2]string{name, uuid}
	}
	return name, uuid
}

// sample reads one device completely. Errors are in the result, never
// panics; a lost device keeps being reported as lost.
func (s *sampler) sample(i int) deviceSample {
	ds := deviceSample{index: i}
	ds.name, ds.uuid = s.identity(i)
	ds.used, ds.total, ds.memErr = s.memory(i)
	if ds.memErr != nil {
		ds.err = ds.memErr
		if errors.Is(ds.memErr, errGPULost) {
			// The handle may be stale after the GPU comes back (it will
			// not without a reset, but do not keep a bad handle forever).
			delete(s.handles, i)
		}
		return ds
	}
	ds.procs, ds.err = s.processes(i, ds.total)
	return ds
}
