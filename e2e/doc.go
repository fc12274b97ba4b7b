// Package e2e holds end-to-end tests that drive the real zguard binary
// against a real dockerd (and, per test, real iptables, network namespaces
// and the fake NVML library). harness_test.go has the shared helpers.
package e2e
