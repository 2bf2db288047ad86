package jetstream

import "testing"

// Several subscribers of one process (routers run side by side, as the
// bench's workers job does) must not share a member name, or each renews
// the partitions the others hold as its own.
func TestDefaultMemberIsUniqueWithinAProcess(t *testing.T) {
	t.Parallel()
	seen := map[string]bool{}
	for range 100 {
		m := defaultMember()
		if seen[m] {
			t.Fatalf("defaultMember() returned %q twice", m)
		}
		seen[m] = true
	}
}
