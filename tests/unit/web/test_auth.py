"""Authentication of DICOMweb requests, and the [web] checks of the configuration."""
from __future__ import annotations

import base64
import hashlib

import pytest

from engine.config import ConfigError, WebConfig, config_from_mapping
from engine.web.auth import Authenticator, check_password, hash_password


def test_password_hash_round_trip():
    stored = hash_password("pw", iterations=1000)
    assert check_password("pw", stored) and not check_password("PW", stored)
    assert not check_password("pw", "garbage")


def test_token_mode():
    token = "abc"
    auth = Authenticator(WebConfig(authentication="token",
                                   token_sha256=(hashlib.sha256(b"abc").hexdigest(),)))
    assert auth.allows(f"Bearer {token}")
    assert not auth.allows("Bearer abd") and not auth.allows(None)
    assert not auth.allows(f"Basic {token}")


def test_basic_mode_and_its_memory():
    auth = Authenticator(WebConfig(authentication="basic", user="u",
                                   password_hash=hash_password("p", iterations=1000)))
    good = "Basic " + base64.b64encode(b"u:p").decode()
    assert not auth.remembered(good)
    assert auth.allows(good) and auth.remembered(good)
    assert not auth.allows("Basic " + base64.b64encode(b"u:q").decode())
    assert not auth.allows("Basic !!!")


def test_exposed_host_needs_authentication():
    with pytest.raises(ConfigError, match="not a loopback"):
        config_from_mapping({"web": {"host": "0.0.0.0"}})
    config_from_mapping({"web": {"host": "0.0.0.0", "enabled": False}})
    config_from_mapping({"web": {"host": "::1"}})
    config_from_mapping({"web": {"host": "0.0.0.0", "authentication": "token",
                                 "token_sha256": ["a" * 64]}})


@pytest.mark.parametrize("web", [
    {"authentication": "token"},
    {"authentication": "token", "token_sha256": ["short"]},
    {"authentication": "basic", "user": "u"},
    {"authentication": "basic", "user": "u:x", "password_hash": hash_password("p", 1000)},
    {"authentication": "magic"},
    {"base_path": "dicomweb"},
    {"base_path": "/dicomweb/"},
    {"port": 70000},
    {"max_upload_bytes": 10},
])
def test_invalid_web_sections(web):
    with pytest.raises(ConfigError, match=r"\[web\]"):
        config_from_mapping({"web": web})
