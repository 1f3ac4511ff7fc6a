// Flag parsing shared by the scenarios.

package main

import (
	"fmt"
	"strconv"
	"strings"
)

// positiveInts parses a comma-separated list of positive numbers given to
// flag.
func positiveInts(flag, list string) ([]int, error) {
	var out []int
	for _, s := range strings.Split(list, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(s))
		if err != nil || n < 1 {
			return nil, fmt.Errorf("%s: %q is not a positive number", flag, s)
		}
		out = append(out, n)
	}
	return out, nil
}
