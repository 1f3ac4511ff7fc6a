package subscriber

import "context"

// update is one node of the Source's update list: a broadcast that
// reaches every listener without buffers to overflow. Each node's done is
// closed once its successor is linked, so a listener that holds a node
// walks every later update in order, however slow it is; nodes nobody
// holds any more are garbage.
type update struct {
	tok    *Token        // the token this update brought (nil: the list head)
	closed bool          // the Source was closed: no more updates
	done   chan struct{} // closed when next is set
	next   *update       // valid once done is closed
}

// publish links an update after the tail. Callers hold s.mu.
func (s *Source) publish(n *update) {
	old := s.tail.Load()
	old.next = n
	s.tail.Store(n)
	close(old.done)
}

// publishClosed ends the list: every channel handed out by Updated is
// closed and every Listener returns ErrClosed after its remaining
// updates. Callers hold s.mu.
func (s *Source) publishClosed() {
	n := &update{closed: true, done: make(chan struct{})}
	n.next = n
	close(n.done)
	s.publish(n)
}

// Updated returns a channel that is closed by the next update of the
// token (a new revision applied), or by Close. Every caller gets a
// channel closed by the same next update, so any number of goroutines can
// wait for it; call Updated again after each wake-up to wait for the one
// after. Updates that happen between a wake-up and the next call of
// Updated are folded into the token that Token returns then: use Listen
// to see every update. Safe for concurrent use; it does not block.
func (s *Source) Updated() <-chan struct{} { return s.tail.Load().done }

// WaitUntilUpdated blocks until the next update of the token after the
// call, and returns nil; or until ctx ends (ctx.Err()), or the Source is
// closed (ErrClosed). Safe for concurrent use.
func (s *Source) WaitUntilUpdated(ctx context.Context) error {
	n := s.tail.Load()
	if n.closed {
		return ErrClosed
	}
	select {
	case <-n.done:
		if n.next.closed {
			return ErrClosed
		}
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// Listener follows every update of a Source, in order, from the moment it
// was made by Listen. One goroutine uses one Listener; make one per
// goroutine. A Listener holds no resources: drop it when done.
type Listener struct {
	node *update
}

// Listen returns a Listener whose Next returns every token the Source
// applies after this call, in the order applied (revision order), none
// skipped, however long the caller takes between calls. (The bucket keeps
// one revision per key: a revision replaced before the watch delivered
// it, or while the watch was being rebuilt, is never seen by any watcher,
// so the Source never applies it.) Safe for concurrent use; it does not
// block.
func (s *Source) Listen() *Listener { return &Listener{node: s.tail.Load()} }

// Next blocks until the update after the last one returned (or after
// Listen), and returns its token. It returns ErrClosed once the Source is
// closed and every earlier update has been returned, and ctx.Err() when
// ctx ends first. Not safe for concurrent use on one Listener.
func (l *Listener) Next(ctx context.Context) (*Token, error) {
	select {
	case <-l.node.done:
	default:
		select {
		case <-l.node.done:
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
	l.node = l.node.next
	if l.node.closed {
		return nil, ErrClosed
	}
	return l.node.tok, nil
}
