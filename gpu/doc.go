// Package gpu watches GPU memory through NVML and, before the device runs
// out of memory, interrupts the running ComfyUI job and then kills the
// managed container's GPU processes. Only the container zguard owns is
// ever acted on.
package gpu
