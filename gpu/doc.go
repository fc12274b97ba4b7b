// Package gpu watches GPU memory through NVML and, before the device runs
// out of memory, interrupts the running ComfyUI job and then kills the
// managed container's GPU processes. Only the container zguard owns is
// ever acted on; other GPU users are shown in the status, never touched.
//
// The pieces, split as policy and mechanism:
//
//   - sampler.go (mechanism): NVML calls through go-nvml. Memory comes from
//     GetMemoryInfo_v2 where the library has it, else v1; processes from
//     the compute and graphics lists. NVML errors, a lost GPU and even a
//     panicking library become errors in the sample, never a crash.
//   - attrib.go (mechanism): NVML reports host PIDs; /proc/PID/cgroup
//     (read through one proc-root helper) names the container.
//   - policy.go (policy, pure, time passed in): the ladder. Over soft_limit,
//     or hard_limit predicted within `predict` at the sustained growth
//     rate: interrupt. Still over after `grace`, over hard_limit, or
//     hard_limit predicted within one poll: kill, after re-reading memory.
//     A cool-down keeps one spike to one action. The adaptive sleep is
//     headroom / peak growth rate, clamped to [20ms, poll_interval].
//   - watchdog.go: the loop that joins them, and max_job_runtime.
//
// No NVML (no library, no driver) leaves the watchdog on standby: status
// says available=false and why, the agent runs on, and NVML is tried again
// every minute. Enabled=false makes it stand down: no sampling, no
// actions, status says disabled.
//
// go-nvml binds NVML's symbols to the first library a process loads, for
// the life of the process, so a changed nvml_library takes effect at the
// next agent start (the status says so).
package gpu
