package controlplane

import (
	"fmt"
	"slices"
	"sync"
	"testing"

	meshcav1 "github.com/meshca/meshca/api/meshca/v1"
)

// Concurrent admin changes to one domain all take effect: none reads the admins and writes
// back a stale copy over another's change.
func TestConcurrentDomainAdminChangesAreAllKept(t *testing.T) {
	e := newAdminEnv(t)
	e.seed()
	root := e.as(rootAdmin)
	ctx := e.ctx()
	const n = 16
	var wg sync.WaitGroup
	errs := make(chan error, 2*n)
	for i := range n {
		wg.Go(func() {
			_, err := root.AddDomainAdmins(ctx, &meshcav1.DomainAdminsRequest{Name: "sports", Admins: []string{fmt.Sprintf("sports.ci%02d", i)}})
			errs <- err
		})
	}
	wg.Wait()
	// And removals racing with additions: the removed ones go, the added ones stay.
	for i := range n {
		wg.Go(func() {
			var err error
			if i%2 == 0 {
				_, err = root.RemoveDomainAdmins(ctx, &meshcav1.DomainAdminsRequest{Name: "sports", Admins: []string{fmt.Sprintf("sports.ci%02d", i)}})
			} else {
				_, err = root.AddDomainAdmins(ctx, &meshcav1.DomainAdminsRequest{Name: "sports", Admins: []string{fmt.Sprintf("sports.bot%02d", i)}})
			}
			errs <- err
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		ok(t, err)
	}
	d, err := root.GetDomain(ctx, &meshcav1.GetDomainRequest{Name: "sports"})
	ok(t, err)
	want := []string{sportsAdmin}
	for i := range n {
		if i%2 == 1 {
			want = append(want, fmt.Sprintf("sports.ci%02d", i), fmt.Sprintf("sports.bot%02d", i))
		}
	}
	slices.Sort(want)
	if !slices.Equal(d.GetAdmins(), want) {
		t.Fatalf("admins = %v\nwant     %v", d.GetAdmins(), want)
	}
}
