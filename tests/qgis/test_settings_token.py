"""The Hugging Face token: in QGIS's authentication database (only an authcfg id in QgsSettings) when a master
password is available; otherwise in QgsSettings with a plain note saying so. Real QgsAuthManager, real
QgsSettings, in the session's throw-away profile."""

from __future__ import annotations

import pytest

pytest.importorskip("qgis.core")


def test_token_goes_to_the_auth_database_or_falls_back_with_a_note(qgis_app):
    from qgis.core import QgsApplication, QgsSettings

    from qgis_rsfm.settings import (
        AUTHCFG_KEY,
        PREFIX,
        STORED_IN_AUTH_DB,
        STORED_IN_SETTINGS,
        RsfmSettings,
    )

    am = QgsApplication.authManager()
    before = RsfmSettings.load()
    qs = QgsSettings()
    try:
        if am.isDisabled():
            pytest.skip(f"QGIS auth system disabled here: {am.disabledMessage()}")
        # 1. No master password and nobody to ask for one (headless): plain QgsSettings, and a note says so.
        if not am.masterPasswordIsSet():
            s = RsfmSettings(hf_token="hf_plain_fallback")
            s.save()
            assert s.token_storage == STORED_IN_SETTINGS
            assert qs.value(PREFIX + "hf_token") == "hf_plain_fallback"
            assert "plain text" in s.token_storage_note and "master password" in s.token_storage_note
            loaded = RsfmSettings.load()
            assert loaded.hf_token == "hf_plain_fallback" and loaded.token_storage == STORED_IN_SETTINGS
        # 2. With a master password: encrypted in the auth DB; QgsSettings holds only the authcfg id.
        assert am.setMasterPassword("rsfm-test-master", True), "could not set the test master password"
        s = RsfmSettings(hf_token="hf_secret_123")
        s.save()
        assert s.token_storage == STORED_IN_AUTH_DB, s.token_storage_note
        authcfg = qs.value(AUTHCFG_KEY)
        assert authcfg and authcfg in am.configIds()
        assert qs.value(PREFIX + "hf_token") in ("", None), "no plain copy of the token may stay in QgsSettings"
        assert "hf_secret_123" not in repr({k: qs.value(k) for k in qs.allKeys() if k.startswith("rsfm")})
        loaded = RsfmSettings.load()
        assert loaded.hf_token == "hf_secret_123" and loaded.token_storage == STORED_IN_AUTH_DB
        assert "encrypted" in loaded.token_storage_note
        assert loaded.backend_config() is None or loaded.backend_config().hf_token == "hf_secret_123"
        # 3. Changing the token updates the same auth entry; clearing it removes the entry.
        RsfmSettings(hf_token="hf_rotated").save()
        assert qs.value(AUTHCFG_KEY) == authcfg and RsfmSettings.load().hf_token == "hf_rotated"
        RsfmSettings(hf_token="").save()
        assert authcfg not in am.configIds() and not qs.value(AUTHCFG_KEY)
        assert RsfmSettings.load().hf_token == ""
    finally:
        before.save()
