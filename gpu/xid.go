package gpu

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/NVIDIA/go-nvml/pkg/nvml"

	"github.com/zguard/zguard/health"
)

// This file watches NVML's XID critical error events (mechanism), and
// says which XIDs an operator must hear about (policy).

// xidWatch is one NVML event set registered for XID errors.
type xidWatch struct {
	lib     nvml.Interface
	set     nvml.EventSet
	handles []nvml.Device // index = device index
}

// startXID registers every device that supports XID events. It must run
// on the goroutine that owns the sampler (it resolves handles).
func (s *sampler) startXID(n int) (*xidWatch, error) {
	x := &xidWatch{lib: s.lib, handles: make([]nvml.Device, n)}
	err := guard("creating an NVML event set", func() error {
		var ret nvml.Return
		x.set, ret = s.lib.EventSetCreate()
		return check("creating an NVML event set", ret)
	})
	if err != nil {
		return nil, err
	}
	registered := 0
	for i := 0; i < n; i++ {
		h, err := s.handle(i)
		if err != nil {
			continue
		}
		x.handles[i] = h
		err = guard("registering for XID events", func() error {
			types, ret := h.GetSupportedEventTypes()
			if ret != nvml.SUCCESS {
				return check("reading supported events", ret)
			}
			if types&nvml.EventTypeXidCriticalError == 0 {
				return errors.New("XID events not supported")
			}
			return check("registering for XID events", h.RegisterEvents(nvml.EventTypeXidCriticalError, x.set))
		})
		if err == nil {
			registered++
		}
	}
	if registered == 0 {
		x.free()
		return nil, errors.New("no device supports XID events")
	}
	return x, nil
}

func (x *xidWatch) free() {
	_ = guard("freeing the event set", func() error { return check("freeing the event set", x.set.Free()) })
}

// run waits for events until ctx ends and reports each XID. NVML's wait
// blocks in the driver, so an idle watch costs nothing.
func (x *xidWatch) run(ctx context.Context, report func(dev int, xid uint64)) error {
	defer x.free()
	failures := 0
	for ctx.Err() == nil {
		var data nvml.EventData
		var ret nvml.Return
		err := guard("waiting for NVML events", func() error {
			data, ret = x.set.Wait(1000)
			return nil
		})
		switch {
		case err != nil:
			return err
		case ret == nvml.SUCCESS:
			failures = 0
			if data.EventType&nvml.EventTypeXidCriticalError != 0 {
				report(x.indexOf(data.Device), data.EventData)
			}
		case ret == nvml.ERROR_TIMEOUT:
			failures = 0
		default:
			failures++
			if failures >= 10 {
				return check("waiting for NVML events", ret)
			}
			select {
			case <-ctx.Done():
			case <-time.After(time.Second):
			}
		}
	}
	return nil
}

func (x *xidWatch) indexOf(d nvml.Device) int {
	for i, h := range x.handles {
		if h != nil && h == d {
			return i
		}
	}
	return -1
}

// XIDEvent is one XID critical error NVML reported.
type XIDEvent struct {
	Time    time.Time `json:"time"`
	Device  int       `json:"device"`
	XID     uint64    `json:"xid"`
	Meaning string    `json:"meaning,omitempty"`
}

// xidMeanings names the XIDs that matter on a compute server (NVIDIA's
// XID catalog).
var xidMeanings = map[uint64]string{
	13: "graphics engine exception", 31: "GPU memory page fault", 43: "GPU stopped processing",
	45: "preemptive cleanup", 48: "double-bit ECC error", 63: "ECC page retirement or row remapping",
	64: "ECC page retirement or row remapping failure", 74: "NVLink error", 79: "GPU has fallen off the bus",
	92: "high single-bit ECC error rate", 94: "contained ECC error", 95: "uncontained ECC error",
	119: "GSP RPC timeout", 120: "GSP error",
}

// xidLevel is how bad an XID is for the machine: 79 means the GPU is
// gone; memory, NVLink and GSP faults mean failing hardware; the rest
// (13, 31, 43, ...) are usually one application's fault and only recorded.
func xidLevel(xid uint64) health.Level {
	switch xid {
	case 79:
		return health.Critical
	case 48, 63, 64, 74, 92, 94, 95, 119, 120:
		return health.Warning
	}
	return health.OK
}

// xidFindingWindow is how long an XID keeps showing in the findings.
const xidFindingWindow = time.Hour

func xidFindings(events []XIDEvent, ref time.Time) []health.Finding {
	var fs []health.Finding
	for _, e := range events {
		if ref.Sub(e.Time) > xidFindingWindow {
			continue
		}
		lvl := xidLevel(e.XID)
		if lvl == health.OK {
			continue
		}
		fs = append(fs, health.Finding{Level: lvl, Subsystem: "gpu",
			Msg: fmt.Sprintf("GPU %d reported XID %d (%s) at %s", e.Device, e.XID, e.Meaning, e.Time.UTC().Format(time.RFC3339))})
	}
	return fs
}
