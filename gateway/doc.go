// Package gateway is zguard's authenticating reverse proxy: the one public
// door to ComfyUI, with Basic auth and bearer tokens, WebSocket
// pass-through, per-identity prompt limits, brute-force lockout into the
// firewall, an Origin (CSRF) guard and an audit log.
package gateway
