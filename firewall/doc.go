// Package firewall keeps zguard's IP allowlist in iptables and ip6tables:
// only allowlisted sources reach protected host ports, blocked ports
// (ComfyUI, Jupyter) are never reachable from outside, including through
// Docker's DNAT/FORWARD path (DOCKER-USER), and bans from other subsystems
// cut established connections at once.
package firewall
