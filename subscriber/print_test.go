package subscriber_test

import (
	"errors"
	"fmt"
	"io"
	"log/slog"
)

func sprintf(format string, args ...any) string { return fmt.Sprintf(format, args...) }

func slogTo(w io.Writer) *slog.Logger {
	return slog.New(slog.NewJSONHandler(w, nil))
}

func itoa(n int) string { return fmt.Sprint(n) }

func errorsIs(err, target error) bool { return errors.Is(err, target) }
