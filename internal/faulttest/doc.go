// Package faulttest holds meshca's container fault tests (its _test.go files): the images
// `make images` builds (hack/images.sh) run a three-node cluster on its own Docker network,
// with a volume per node's data dir and one shared self-signed CA dir, while the test process
// registers and refreshes instances through the nodes' published 127.0.0.1 ports. The tests
// SIGKILL the leader, cut it off the cluster network, pause a follower and restart the whole
// cluster, and after each fault check that every acknowledged issuance is in every node's
// state, that no refresh was acknowledged twice for one presented serial, that the minority
// side of a partition refused writes, and how long issuance took to resume.
//
// The tests need Docker: they skip without it on a developer's machine and fail in CI
// (MESHCA_REQUIRE_DOCKER or CI set). The provider subpackage is the launcher the cluster
// confirms instances with.
package faulttest
