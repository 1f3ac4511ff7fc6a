package natsconf

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/tokenkeeper/tokenkeeper/contract"
)

// ErrNotMirror means a bucket that should be a read-only mirror exists
// here as something else: an ordinary bucket (written locally, by a
// refresher in mode lead or a tool), or a mirror of another bucket or
// domain. The server cannot turn a stream into a mirror; the error says
// what to do.
var ErrNotMirror = errors.New("the bucket is not the expected mirror")

// MirrorConfig describes a KV bucket that mirrors the bucket of the same
// name in another JetStream domain (a follower environment's copy of
// production's tokens), for EnsureMirror.
type MirrorConfig struct {
	// Name is the bucket name, here and in the origin domain.
	Name string
	// Domain is the origin's JetStream domain (production's
	// nats.embedded.jetstream_domain, or jetstream.domain of its server).
	Domain string
	// Replicas is the number of replicas of the mirror, 1–5 (0 means 1).
	Replicas int
	// Description is the mirror's description.
	Description string
}

// EnsureMirror creates the KV bucket cfg.Name as a read-only mirror of
// the bucket of that name in JetStream domain cfg.Domain (the stream
// KV_<name> with mirror {name: KV_<name>, external: {api:
// $JS.<domain>.API}} and mirror_direct), or checks an existing one. The
// mirror copies every revision with the origin's revision numbers, so a
// follower's services read and watch it like the origin, and a stale
// revision they send to the origin's refresher means the same there. A
// mirror takes no writes: kv.Put on it fails.
//
// Calling it again changes nothing. The origin need not be reachable:
// the server keeps retrying the mirror by itself (see the stream's
// mirror info, Lag and Active). Transient errors are retried as in
// EnsureBucket until ctx is done (DefaultEnsureTimeout without a
// deadline).
//
// Errors: ErrInvalidBucketConfig for a bad name, domain or replicas,
// before any request; ErrNotMirror when the bucket exists and is not
// this mirror; ErrNoJetStream, ErrServerTooOld as for EnsureBucket.
func EnsureMirror(ctx context.Context, js jetstream.JetStream, cfg MirrorConfig) (jetstream.KeyValue, error) {
	var errs []error
	bad := func(format string, args ...any) {
		errs = append(errs, fmt.Errorf("%w: mirror %q: %s", ErrInvalidBucketConfig, cfg.Name, fmt.Sprintf(format, args...)))
	}
	if !bucketNameRE.MatchString(cfg.Name) {
		bad("name must be 1 or more of [A-Za-z0-9_-]")
	}
	if !ValidDomain(cfg.Domain) {
		bad("domain %q is not a JetStream domain (1-64 of A-Z a-z 0-9 _ -)", cfg.Domain)
	}
	if cfg.Replicas < 0 || cfg.Replicas > 5 {
		bad("replicas %d not in 1-5", cfg.Replicas)
	}
	if len(errs) > 0 {
		return nil, errors.Join(errs...)
	}
	kvc := jetstream.KeyValueConfig{
		Bucket:      cfg.Name,
		Description: cfg.Description,
		Storage:     jetstream.FileStorage,
		Replicas:    max(cfg.Replicas, 1),
		Mirror:      &jetstream.StreamSource{Name: cfg.Name, Domain: cfg.Domain},
	}
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, DefaultEnsureTimeout)
		defer cancel()
	}
	backoff := 50 * time.Millisecond
	for {
		kv, err := ensureMirrorOnce(ctx, js, kvc, cfg.Domain)
		if err == nil {
			return kv, nil
		}
		if errors.Is(err, ErrNotMirror) || !transient(err) || ctx.Err() != nil {
			return nil, fmt.Errorf("mirror %s: %w", cfg.Name, err)
		}
		t := time.NewTimer(backoff)
		select {
		case <-ctx.Done():
			t.Stop()
			return nil, fmt.Errorf("mirror %s: %w (last error: %w)", cfg.Name, ctx.Err(), err)
		case <-t.C:
		}
		backoff = min(2*backoff, time.Second)
	}
}

// ensureMirrorOnce makes one attempt of EnsureMirror.
func ensureMirrorOnce(ctx context.Context, js jetstream.JetStream, kvc jetstream.KeyValueConfig, domain string) (jetstream.KeyValue, error) {
	ctx, cancel := context.WithTimeout(ctx, ensureAttemptTimeout)
	defer cancel()
	if _, err := js.AccountInfo(ctx); err != nil {
		if errors.Is(err, jetstream.ErrJetStreamNotEnabled) || errors.Is(err, jetstream.ErrJetStreamNotEnabledForAccount) {
			return nil, fmt.Errorf("%w: %w", ErrNoJetStream, err)
		}
		return nil, err
	}
	if err := checkServerVersion(js.Conn().ConnectedServerVersion()); err != nil {
		return nil, err
	}
	stream := contract.KVStream(kvc.Bucket)
	st, err := js.Stream(ctx, stream)
	if errors.Is(err, jetstream.ErrStreamNotFound) {
		kv, err := js.CreateKeyValue(ctx, kvc)
		if errors.Is(err, jetstream.ErrBucketExists) || errors.Is(err, jetstream.ErrStreamNameAlreadyInUse) {
			// Created meanwhile by someone else: check what it is.
			return ensureMirrorOnce(ctx, js, kvc, domain)
		}
		return kv, err
	}
	if err != nil {
		return nil, err
	}
	sc := st.CachedInfo().Config
	want := DomainAPIPrefix(domain)
	switch m := sc.Mirror; {
	case m == nil:
		return nil, fmt.Errorf("%w: bucket %s exists on this server as an ordinary bucket, written here (by a refresher in mode lead, a test, a tool); "+
			"a follower's bucket must be a read-only mirror of the origin's. Make sure nothing else uses it, delete it (nats kv del %s), and start again",
			ErrNotMirror, kvc.Bucket, kvc.Bucket)
	case m.Name != stream || m.External == nil || m.External.APIPrefix != want:
		from := "this domain"
		if m.External != nil {
			from = m.External.APIPrefix
		}
		return nil, fmt.Errorf("%w: bucket %s mirrors %s from %s, not %s from %s; delete it (nats kv del %s) and start again",
			ErrNotMirror, kvc.Bucket, m.Name, from, stream, want, kvc.Bucket)
	}
	return js.KeyValue(ctx, kvc.Bucket)
}
