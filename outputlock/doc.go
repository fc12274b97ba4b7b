// Package outputlock keeps the ComfyUI output folder's owner and modes
// locked, continuously, without ever following a symlink out of it.
package outputlock
