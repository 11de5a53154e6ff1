"""The public API as a type checker sees it: mypy checks this file, pytest only imports it.

Every line here is something a user writes; a change that breaks their types breaks mypy here.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, assert_type
from uuid import UUID

import pydantic_toast
from pydantic_toast import ExternalBaseModel, ExternalConfigDict, ExternalReference, StorageBackend

if TYPE_CHECKING:

    class Profile(ExternalBaseModel):
        name: str
        model_config = ExternalConfigDict(storage="memory://typing", schema_version=2, timeout=5.0)

    async def async_api(profile: Profile, reference: ExternalReference, raw: dict[str, Any]) -> None:
        assert_type(await profile.save(), ExternalReference)
        assert_type(await Profile.load(reference), Profile)
        assert_type(await Profile.load(reference.id), Profile)
        assert_type(await Profile.load(raw), Profile)
        assert_type(await Profile.save_many([profile]), list[ExternalReference])
        assert_type(await Profile.load_many([reference, reference.id]), list[Profile])
        assert_type(await profile.delete(), bool)
        assert_type(await Profile.delete(reference), bool)
        assert_type(await pydantic_toast.adump(profile), Any)
        assert_type(await profile.save_external(), dict[str, str])
        assert_type(await Profile.load_external(raw), Profile)
        await pydantic_toast.aclose()

    def sync_api(profile: Profile) -> None:
        assert_type(profile.model_dump(), dict[str, Any])
        assert_type(profile.model_dump_json(), str)
        assert_type(Profile.model_validate({"class_name": "Profile", "id": "…"}), Profile)
        assert_type(Profile.model_validate_json("{}"), Profile)
        assert_type(profile.external_reference, ExternalReference | None)
        assert_type(pydantic_toast.stats(), dict[str, dict[str, int]])
        reference = ExternalReference(class_name="Profile", id=UUID(int=0))
        assert_type(reference.as_dict(), dict[str, str])
        assert_type(profile.save_external_sync(), dict[str, str])
        assert_type(Profile.load_external_sync(reference), Profile)
        assert_type(pydantic_toast.is_external_reference({}), bool)
        assert_type(Profile.is_external_reference({}), bool)
        pydantic_toast.close()

    def backend_registration(backend: type[StorageBackend]) -> None:
        pydantic_toast.register_backend("custom", backend, replace=True)


def test_this_module_imports() -> None:
    assert pydantic_toast.__version__
