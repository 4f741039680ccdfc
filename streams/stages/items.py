"""Catalog stage: items are applied and embedded from their text at once; captions come later.

A new item is recommendable as soon as its event is applied. Captioning (seconds per item on a
CPU) runs from the caption-requests topic in its own agent; when a caption arrives for the
content it was asked for, the item is re-embedded with it. A caption the captioner marks as
degenerate (empty, or looping) is not used: the item keeps its text-only profile.
"""
from __future__ import annotations

import schemas
from models.embeddings import item_text as embedding_text
from models.llm.pipeline import usable_caption
from streams.events import accept, encode_vector, in_partition_of
from streams.services import Services, isolate
from streams.state import content_hash


def embedded_text(item: dict, caption: str | None = None) -> str:
    """What an item is embedded from: title, categories, description, then the caption if usable."""
    text = embedding_text(item["title"], item.get("categories"), item.get("description"))
    return f"{text}. {caption}" if caption else text


class ItemsStage:
    def __init__(self, services: Services):
        self.services = services

    async def process(self, events) -> None:
        """Validate, embed what changed (one model call, a failing item isolated and dead-lettered),
        apply in order, and ask for captions of what changed."""
        services, metrics = self.services, self.services.metrics
        accepted = []
        for event in events:
            message = event.message
            metrics.observe_offset(message.topic, message.partition, message.offset)
            try:
                accepted.append((event, accept(message, "item", "item_id")))
            except schemas.InvalidEvent as error:
                await services.publisher.dead_letter(message, error.kind, str(error))
        digests = {id(item): content_hash(item) for _, item in accepted if item.get("op") != "delete"}
        changed = []
        for event, item in accepted:
            if id(item) in digests:
                old = services.item_profiles.get(item["item_id"])
                if not old or old.get("content_hash") != digests[id(item)] or "embedding" not in old:
                    changed.append((event, item))
        vectors, failures = await isolate(services, services.models.embed, [embedded_text(item) for _, item in changed])
        failed = {id(changed[i][1]): exc for i, exc in failures.items()}
        embedded = {id(item): vec for (_, item), vec in zip(changed, vectors) if id(item) not in failed}
        for event, item in accepted:
            if id(item) in failed:
                exc = failed[id(item)]
                await services.publisher.dead_letter(event.message, "EmbeddingFailed", f"{type(exc).__name__}: {exc}")
                continue
            in_partition_of(event)
            self.apply(item, digests.get(id(item)), embedded.get(id(item)))
        if services.settings.captions_on:  # captioned here (role all) or by the llm role
            for event, item in changed:
                if id(item) in embedded:
                    await services.publisher.send("caption_requests", item["item_id"],
                                           {**item, "content_hash": digests[id(item)]})
                    metrics.inc("caption_requests_total")

    def apply(self, item: dict, digest: str | None, vector) -> None:
        services, item_id = self.services, item["item_id"]
        if item.get("op") == "delete":
            services.item_profiles.pop(item_id, None)
            services.catalog.remove(item_id)
            services.metrics.inc("items_deleted_total")
            return
        profile = dict(services.item_profiles.get(item_id) or {})
        profile.update({
            "item_id": item_id, "title": item["title"], "categories": item.get("categories", []),
            "description": item.get("description"), "image": item.get("image"),
            "content_hash": digest, "event_time": item["event_time"],
        })
        if vector is not None:  # new or changed content: the caption is redone, the text embedded now
            for key in ("caption", "caption_source", "image_error", "caption_rejected"):
                profile.pop(key, None)
            profile["caption_pending"] = services.settings.captions_on
            profile["text"] = embedded_text(item)
            profile["embedding"] = encode_vector(vector)
            services.catalog.upsert(item_id, vector)
            services.metrics.inc("items_embedded_total")
        services.item_profiles[item_id] = profile
        services.metrics.inc("items_applied_total")


class CaptionsStage:
    """Caption requests -> captions -> re-embedding, batched; a failing item is isolated and dead-lettered."""

    def __init__(self, services: Services):
        self.services = services

    def caption(self, requests: list[dict]):
        from models.llm.captioner import ItemInput

        return self.services.models.captioner.caption([
            ItemInput(r["item_id"], r["title"], r.get("categories"), r.get("description"), r.get("image"))
            for r in requests])

    async def captioned(self, events) -> list[tuple]:
        """(event, request, caption) for each caption request written; failures dead-lettered."""
        services, metrics = self.services, self.services.metrics
        requests = []
        for event in events:
            try:
                requests.append((event, schemas.parse("caption_request", event.message.value)))
            except schemas.InvalidEvent as error:
                await services.publisher.dead_letter(event.message, error.kind, str(error))
        captions, failures = await isolate(services, self.caption, [r for _, r in requests])
        metrics.inc("captions_total", len(requests) - len(failures))
        done = []
        for i, ((event, request), caption) in enumerate(zip(requests, captions)):
            if i in failures:
                exc = failures[i]
                await services.publisher.dead_letter(event.message, "CaptionFailed", f"{type(exc).__name__}: {exc}")
                continue
            if caption.image_error:
                metrics.inc("caption_image_fallbacks_total")
            if caption.rejected:
                metrics.inc("captions_rejected_total", reason=caption.rejected.split(" (")[0])
            done.append((event, request, caption))
        return done

    async def process(self, events) -> None:
        """Role all: caption and apply in one step."""
        await self.embed_and_apply(await self.captioned(events))

    async def publish(self, events) -> None:
        """Role llm: caption and send the captions to the state role (``CaptionResultsStage``)."""
        for event, request, caption in await self.captioned(events):
            await self.services.publisher.send("captions", request["item_id"],
                                       {"item_id": request["item_id"], "request": request, **caption.to_dict()})

    async def embed_and_apply(self, usable: list[tuple]) -> None:
        """Re-embed each item with its caption (a failing item dead-lettered) and apply it."""
        services = self.services
        texts = [embedded_text(r, usable_caption(c.to_dict())) for _, r, c in usable]
        vectors, failures = await isolate(services, services.models.embed, texts)
        for i, ((event, request, caption), text, vector) in enumerate(zip(usable, texts, vectors)):
            if i in failures:
                exc = failures[i]
                await services.publisher.dead_letter(event.message, "EmbeddingFailed", f"{type(exc).__name__}: {exc}")
                continue
            in_partition_of(event)
            self.apply(request, caption, text, vector)

    def apply(self, request: dict, caption, text: str, vector) -> None:
        services, item_id = self.services, request["item_id"]
        profile = services.item_profiles.get(item_id)
        if not profile or profile.get("content_hash") != request["content_hash"]:
            services.metrics.inc("captions_outdated_total")  # changed or deleted meanwhile: a newer request exists
            return
        profile = {**profile, **caption.to_dict(), "caption_pending": False}
        if caption.rejected:
            services.item_profiles[item_id] = profile
            return
        profile.update(text=text, embedding=encode_vector(vector))
        services.item_profiles[item_id] = profile
        services.catalog.upsert(item_id, vector)
        services.metrics.inc("captions_applied_total")


class CaptionResultsStage:
    """Role state: captions the llm role wrote, re-embedded and applied like role all's."""

    def __init__(self, captions: CaptionsStage):
        self.captions, self.services = captions, captions.services

    async def process(self, events) -> None:
        from models.llm.captioner import Caption

        usable = []
        for event in events:
            try:
                record = schemas.parse("caption", event.message.value)
            except schemas.InvalidEvent as error:
                await self.services.publisher.dead_letter(event.message, error.kind, str(error))
                continue
            caption = Caption(record["caption"], record["caption_source"], record.get("image_error"),
                              record.get("caption_rejected"))
            usable.append((event, record["request"], caption))
        await self.captions.embed_and_apply(usable)
