from pathlib import Path

from django.conf import settings

from infra.contract import contract_markdown


def test_docs_events_md_is_up_to_date():
    on_disk = (Path(settings.BASE_DIR) / "docs" / "events.md").read_text()
    assert on_disk == contract_markdown(), "run: python manage.py contract_doc"


def test_every_routed_subject_has_a_handler_and_a_message_class():
    from django.utils.module_loading import import_string

    from infra.messages import registered_subjects
    from infra.streams import ROUTES

    for route in ROUTES:
        handlers = import_string(route.handlers)
        for subject in route.consumer.subjects:
            assert subject in handlers, f"{route.key} has no handler for {subject}"
            assert subject in registered_subjects()
