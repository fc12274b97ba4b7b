package config

import (
	"path/filepath"
	"time"
)

// GPU configures the GPU memory watchdog. Limits are percentages of a
// device's memory ("90%") or absolute sizes ("70GiB").
type GPU struct {
	Enabled      bool         `toml:"enabled"`
	Devices      GPUSelection `toml:"devices"`
	PollInterval Duration     `toml:"poll_interval"` // upper bound; adaptive below it
	SoftLimit    Limit        `toml:"soft_limit"`    // interrupt the running job
	HardLimit    Limit        `toml:"hard_limit"`    // kill the container's GPU processes
	Grace        Duration     `toml:"grace"`         // time an interrupt gets before escalation
	Predict      Duration     `toml:"predict"`       // act early if hard_limit is reached within this
	Cooldown     Duration     `toml:"cooldown"`      // quiet time after an action
	// MaxJobRuntime interrupts a single job that runs longer ("0" = off).
	MaxJobRuntime Duration `toml:"max_job_runtime"`
	// ClearQueue also clears ComfyUI's pending queue on interrupt.
	ClearQueue bool `toml:"clear_queue"`
	// NVMLLibrary overrides the path of libnvidia-ml.so.1.
	NVMLLibrary string `toml:"nvml_library"`
}

func defaultGPU() GPU {
	return GPU{
		Enabled:      true,
		Devices:      GPUSelection{All: true},
		PollInterval: Duration(250 * time.Millisecond),
		SoftLimit:    Limit{Percent: 90},
		HardLimit:    Limit{Percent: 97},
		Grace:        Duration(5 * time.Second),
		Predict:      Duration(2 * time.Second),
		Cooldown:     Duration(10 * time.Second),
	}
}

func (g *GPU) validate(v *validator) {
	if g.PollInterval.D() < 20*time.Millisecond || g.PollInterval.D() > time.Minute {
		v.errorf("gpu.poll_interval", "must be between 20ms and 1m, got %s", g.PollInterval.D())
	}
	if g.SoftLimit.IsZero() || g.HardLimit.IsZero() {
		v.errorf("gpu.soft_limit", "soft_limit and hard_limit are required")
	}
	// Comparable only when both use the same unit.
	if g.SoftLimit.Percent > 0 && g.HardLimit.Percent > 0 && g.SoftLimit.Percent >= g.HardLimit.Percent {
		v.errorf("gpu.soft_limit", "soft_limit (%g%%) must be below hard_limit (%g%%)", g.SoftLimit.Percent, g.HardLimit.Percent)
	}
	if g.SoftLimit.Bytes > 0 && g.HardLimit.Bytes > 0 && g.SoftLimit.Bytes >= g.HardLimit.Bytes {
		v.errorf("gpu.soft_limit", "soft_limit must be below hard_limit")
	}
	if g.NVMLLibrary != "" && !filepath.IsAbs(g.NVMLLibrary) {
		v.errorf("gpu.nvml_library", "must be an absolute path, got %q", g.NVMLLibrary)
	}
	if g.Grace.D() > 10*time.Minute {
		v.errorf("gpu.grace", "must be at most 10m, got %s", g.Grace.D())
	}
	if g.Predict.D() > time.Minute {
		v.errorf("gpu.predict", "must be at most 1m (\"0\" turns prediction off), got %s", g.Predict.D())
	}
	if g.Cooldown.D() > time.Hour {
		v.errorf("gpu.cooldown", "must be at most 1h, got %s", g.Cooldown.D())
	}
	if g.MaxJobRuntime.D() != 0 && g.MaxJobRuntime.D() < time.Second {
		v.errorf("gpu.max_job_runtime", "must be \"0\" (off) or at least 1s, got %s", g.MaxJobRuntime.D())
	}
	if !g.Enabled {
		return
	}
	if (g.SoftLimit.Percent > 0) != (g.HardLimit.Percent > 0) {
		v.warnf("gpu.soft_limit", "soft_limit and hard_limit use different units; their order is checked per device at run time")
	}
	if g.HardLimit.Percent >= 100 {
		v.warnf("gpu.hard_limit", "a hard_limit of 100%% acts only after the GPU is already full")
	}
}
