package main

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"
)

type Pool struct {
	mu      sync.Mutex
	workers map[string]*Worker
}

var ErrBusy = errors.New("pool: all workers busy")

func (p *Pool) Acquire(ctx context.Context) (*Worker, error) {
	ctx, cancel := context.WithTimeout(ctx, 250*time.Millisecond)
	defer cancel()
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, w := range p.workers {
		if !w.busy {
			w.busy = true
			return w, nil
		}
	}
	return nil, fmt.Errorf("acquire: %w (%d workers)", ErrBusy, len(p.workers))
}
