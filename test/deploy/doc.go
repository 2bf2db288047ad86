// Package deploy holds the tests of the deployment files: the Docker
// Compose files and Kubernetes manifests in deploy/, the Dockerfile, and
// the deployment guides in docs/deployment. They parse the files and check
// them against the example configs in topologies/ (ports, images, roles,
// the mounted config, the variables its *_env keys name, probes), so that
// a change to one that the other does not follow fails the build.
package deploy
