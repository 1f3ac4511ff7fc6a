package natsconf

import (
	"context"
	"errors"
	"fmt"
	"regexp"
	"strconv"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// Defaults of EnsureBucket.
const (
	// DefaultLimitMarkerTTL is how long a bucket keeps the marker left when
	// a key expires (per-key TTL or bucket TTL), so that watchers that
	// resume late still see the removal.
	DefaultLimitMarkerTTL = time.Minute
	// DefaultEnsureTimeout bounds EnsureBucket, retries included, when ctx
	// has no deadline.
	DefaultEnsureTimeout = 30 * time.Second
	// ensureAttemptTimeout bounds one JetStream API request.
	ensureAttemptTimeout = 5 * time.Second
)

// MinServerVersion is the oldest nats-server tokenkeeper works with: 2.11
// brought per-message TTLs and limit markers.
const MinServerVersion = "2.11.0"

// BucketConfig describes a KV bucket for EnsureBucket.
type BucketConfig struct {
	// Name is the bucket name ([A-Za-z0-9_-]+), e.g. DefaultBucket.
	Name string
	// Replicas is the number of replicas, 1–5 (0 means 1); 3 on a cluster.
	Replicas int
	// History is the number of values kept per key, 1–64 (0 means 1).
	History int
	// Description is the bucket's description.
	Description string
	// TTL is the bucket-wide maximum age of a value (a lease bucket);
	// 0 keeps values forever. Every write restarts the key's age.
	TTL time.Duration
	// LimitMarkerTTL is how long the marker left by an expired key lives;
	// it also enables per-key TTLs (jetstream.KeyTTL). 0 means
	// DefaultLimitMarkerTTL; negative leaves markers and per-key TTLs off
	// (which the server refuses for a bucket that already has them).
	// Minimum 1 s. With History > 1 the server raises per-key TTLs shorter
	// than LimitMarkerTTL to it: keep History 1 for short per-key TTLs.
	LimitMarkerTTL time.Duration
	// MaxConsumers is the most consumers (watchers: every Source, every
	// refresher replica, every tokenctl watch) the bucket's stream
	// allows. 0 leaves the server's default, which nats-server 2.12+
	// sets to 1000 per stream; a positive value is set on the stream.
	MaxConsumers int
}

var bucketNameRE = regexp.MustCompile(`^[A-Za-z0-9_-]+$`)

// keyValueConfig validates cfg and turns it into the jetstream config.
func (cfg BucketConfig) keyValueConfig() (jetstream.KeyValueConfig, error) {
	var errs []error
	bad := func(format string, args ...any) {
		errs = append(errs, fmt.Errorf("%w: bucket %q: %s", ErrInvalidBucketConfig, cfg.Name, fmt.Sprintf(format, args...)))
	}
	if !bucketNameRE.MatchString(cfg.Name) {
		bad("name must be 1 or more of [A-Za-z0-9_-]")
	}
	if cfg.Replicas < 0 || cfg.Replicas > 5 {
		bad("replicas %d not in 1-5", cfg.Replicas)
	}
	if cfg.History < 0 || cfg.History > jetstream.KeyValueMaxHistory {
		bad("history %d not in 1-%d", cfg.History, jetstream.KeyValueMaxHistory)
	}
	if cfg.TTL < 0 {
		bad("negative TTL %s", cfg.TTL)
	}
	marker := cfg.LimitMarkerTTL
	switch {
	case marker == 0:
		marker = DefaultLimitMarkerTTL
	case marker < 0:
		marker = 0
	case marker < time.Second:
		bad("limit marker TTL %s is shorter than 1s", cfg.LimitMarkerTTL)
	}
	if len(errs) > 0 {
		return jetstream.KeyValueConfig{}, errors.Join(errs...)
	}
	return jetstream.KeyValueConfig{
		Bucket:         cfg.Name,
		Description:    cfg.Description,
		History:        uint8(max(cfg.History, 1)),
		TTL:            cfg.TTL,
		Storage:        jetstream.FileStorage,
		Replicas:       max(cfg.Replicas, 1),
		LimitMarkerTTL: marker,
	}, nil
}

// EnsureBucket creates the KV bucket cfg describes, or checks an existing
// one and updates it when its replicas, history, description, TTL or limit
// marker TTL differ. Calling it again with the same cfg changes nothing, so
// every replica of a service may call it at startup.
//
// The limit marker TTL is always set (see BucketConfig.LimitMarkerTTL), so
// per-key TTLs work. Transient cluster errors — no JetStream leader yet, not
// enough peers, a timed-out request, as happens with the first R3 create
// on a fresh cluster — are retried with backoff until ctx is done
// (DefaultEnsureTimeout if ctx has no deadline).
//
// Errors: ErrInvalidBucketConfig before any request; ErrNoJetStream when
// the server or the account has no JetStream; ErrServerTooOld when the
// connected server is older than MinServerVersion.
func EnsureBucket(ctx context.Context, js jetstream.JetStream, cfg BucketConfig) (jetstream.KeyValue, error) {
	kvc, err := cfg.keyValueConfig()
	if err != nil {
		return nil, err
	}
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, DefaultEnsureTimeout)
		defer cancel()
	}
	backoff := 50 * time.Millisecond
	for {
		kv, err := ensureOnce(ctx, js, kvc)
		if err == nil && cfg.MaxConsumers > 0 {
			err = ensureMaxConsumers(ctx, js, cfg.Name, cfg.MaxConsumers)
		}
		if err == nil {
			return kv, nil
		}
		if !transient(err) || ctx.Err() != nil {
			return nil, fmt.Errorf("bucket %s: %w", cfg.Name, err)
		}
		t := time.NewTimer(backoff)
		select {
		case <-ctx.Done():
			t.Stop()
			return nil, fmt.Errorf("bucket %s: %w (last error: %w)", cfg.Name, ctx.Err(), err)
		case <-t.C:
		}
		backoff = min(2*backoff, time.Second)
	}
}

// ensureOnce makes one attempt of EnsureBucket.
func ensureOnce(ctx context.Context, js jetstream.JetStream, kvc jetstream.KeyValueConfig) (jetstream.KeyValue, error) {
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

	kv, err := js.KeyValue(ctx, kvc.Bucket)
	if errors.Is(err, jetstream.ErrBucketNotFound) {
		kv, err = js.CreateKeyValue(ctx, kvc)
		if errors.Is(err, jetstream.ErrBucketExists) {
			// Created meanwhile by someone else, with another config.
			return js.UpdateKeyValue(ctx, kvc)
		}
		return kv, err
	}
	if err != nil {
		return nil, err
	}
	st, err := kv.Status(ctx)
	if err != nil {
		return nil, err
	}
	if bs, ok := st.(*jetstream.KeyValueBucketStatus); ok && matches(bs.StreamInfo().Config, kvc) {
		return kv, nil
	}
	return js.UpdateKeyValue(ctx, kvc)
}

// matches reports whether an existing bucket's stream has the settings
// EnsureBucket manages.
func matches(sc jetstream.StreamConfig, kvc jetstream.KeyValueConfig) bool {
	return sc.Replicas == kvc.Replicas &&
		sc.MaxMsgsPerSubject == int64(kvc.History) &&
		sc.Description == kvc.Description &&
		sc.MaxAge == kvc.TTL &&
		sc.SubjectDeleteMarkerTTL == kvc.LimitMarkerTTL &&
		(sc.AllowMsgTTL || kvc.LimitMarkerTTL == 0)
}

// JetStream API error codes worth a retry while a cluster settles.
const (
	errCodeClusterNoPeers        jetstream.ErrorCode = 10005
	errCodeClusterNotActive      jetstream.ErrorCode = 10006
	errCodeClusterNotAvail       jetstream.ErrorCode = 10008
	errCodeClusterNotLeader      jetstream.ErrorCode = 10009
	errCodeInsufficientResources jetstream.ErrorCode = 10023
)

// transient reports whether err may go away by itself.
func transient(err error) bool {
	if errors.Is(err, ErrNoJetStream) || errors.Is(err, ErrServerTooOld) {
		return false
	}
	var apiErr *jetstream.APIError
	if errors.As(err, &apiErr) {
		switch apiErr.ErrorCode {
		case errCodeClusterNoPeers, errCodeClusterNotActive, errCodeClusterNotAvail,
			errCodeClusterNotLeader, errCodeInsufficientResources:
			return true
		}
		return false
	}
	return errors.Is(err, context.DeadlineExceeded) || errors.Is(err, nats.ErrTimeout) ||
		errors.Is(err, jetstream.ErrNoStreamResponse)
}

// checkServerVersion fails with ErrServerTooOld for servers before 2.11.
// An unknown version (not connected at this instant) passes.
func checkServerVersion(v string) error {
	major, minor, ok := parseVersion(v)
	if !ok {
		return nil
	}
	if major < 2 || (major == 2 && minor < 11) {
		return fmt.Errorf("%w (connected to %s)", ErrServerTooOld, v)
	}
	return nil
}

// parseVersion reads the major and minor numbers of "2.11.3-beta".
func parseVersion(v string) (major, minor int, ok bool) {
	v = strings.TrimPrefix(strings.TrimSpace(v), "v")
	parts := strings.SplitN(v, ".", 3)
	if len(parts) < 2 {
		return 0, 0, false
	}
	num := func(s string) (int, bool) {
		end := 0
		for end < len(s) && s[end] >= '0' && s[end] <= '9' {
			end++
		}
		n, err := strconv.Atoi(s[:end])
		return n, err == nil
	}
	major, ok1 := num(parts[0])
	minor, ok2 := num(parts[1])
	return major, minor, ok1 && ok2
}

// ensureMaxConsumers sets max_consumers of bucket's stream to n unless it
// is n already. The KV API always writes -1, which nats-server counts as
// "not set" and replaces with its default of 1000 consumers per stream.
func ensureMaxConsumers(ctx context.Context, js jetstream.JetStream, bucket string, n int) error {
	ctx, cancel := context.WithTimeout(ctx, ensureAttemptTimeout)
	defer cancel()
	st, err := js.Stream(ctx, "KV_"+bucket)
	if err != nil {
		return err
	}
	sc := st.CachedInfo().Config
	if sc.MaxConsumers == n {
		return nil
	}
	sc.MaxConsumers = n
	_, err = js.UpdateStream(ctx, sc)
	return err
}
