package agent

import (
	"errors"
	"sync"
)

type syncMutex = sync.Mutex

var errNoAPI = errors.New("no ComfyUI API address (container.api_url) configured")
