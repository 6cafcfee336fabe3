"""Releases: what the training pipeline ships, published once under `<store>/<release>/<version>/` and read by
the chart (model fetcher, monitoring CronJob, KServe storageUri) from that URI alone. See mirec.release.store."""

from mirec.release.deploy import deploy, release_values, split_arms
from mirec.release.store import (ReleaseError, ReleaseManifest, build_manifest, fetch_release, publish_release,
                                 read_manifest, release_uri, verify_dir, write_manifest)

__all__ = ["ReleaseError", "ReleaseManifest", "build_manifest", "deploy", "fetch_release", "publish_release",
           "read_manifest", "release_uri", "release_values", "split_arms", "verify_dir", "write_manifest"]
