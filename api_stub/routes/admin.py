"""Brand set-up under /api/admin/v1: idempotent PUTs, each with its GET."""

from __future__ import annotations

import uuid
from typing import Any

from fastapi import APIRouter, Request
from sqlalchemy import select

from api_stub import responses as docs
from api_stub.deps import CurrentBrand, transaction
from api_stub.errors import ApiError
from api_stub.schemas import CampaignIn, RewardIn, SettingsIn, TierIn
from worker.ledger.wallet import utcnow
from worker.models import Brand, Campaign, Reward

router = APIRouter()


def _reward_view(r: Reward) -> dict[str, Any]:
    return {"id": str(r.id), "type": r.type, "name": r.name, "cost": float(r.cost)}


def _campaign_view(c: Campaign) -> dict[str, Any]:
    return {"id": str(c.id), "name": c.name, "funded_by": c.funded_by}


def _taken(kind: str) -> ApiError:
    return ApiError(409, "conflict", f"this {kind} id is already taken")


@router.put("/rewards/{reward_id}", response_model=None, responses=docs.REWARD)
def put_reward(
    reward_id: uuid.UUID, body: RewardIn, request: Request, who: CurrentBrand
) -> dict[str, Any]:
    with transaction(request) as session:
        reward = session.get(Reward, reward_id, with_for_update=True)
        if reward is None:
            reward = Reward(id=reward_id, brand_id=who.brand_id)
            session.add(reward)
        elif reward.brand_id != who.brand_id:
            raise _taken("reward")
        reward.type, reward.name, reward.cost = body.type, body.name, body.cost
        reward.updated_at = utcnow()
        session.flush()
        return {"data": _reward_view(reward)}


@router.get("/rewards/{reward_id}", response_model=None, responses=docs.REWARD)
def get_reward(reward_id: uuid.UUID, request: Request, who: CurrentBrand) -> dict[str, Any]:
    with transaction(request) as session:
        reward = session.get(Reward, reward_id)
        if reward is None or reward.brand_id != who.brand_id:
            raise ApiError(404, "not_found", f"reward {reward_id} not found")
        return {"data": _reward_view(reward)}


@router.get("/rewards", response_model=None, responses=docs.REWARDS)
def list_rewards(request: Request, who: CurrentBrand) -> dict[str, Any]:
    with transaction(request) as session:
        rows = session.scalars(
            select(Reward).where(Reward.brand_id == who.brand_id).order_by(Reward.name)
        )
        return {"data": [_reward_view(r) for r in rows]}


@router.put("/campaigns/{campaign_id}", response_model=None, responses=docs.CAMPAIGN)
def put_campaign(
    campaign_id: uuid.UUID, body: CampaignIn, request: Request, who: CurrentBrand
) -> dict[str, Any]:
    with transaction(request) as session:
        campaign = session.get(Campaign, campaign_id, with_for_update=True)
        if campaign is None:
            campaign = Campaign(id=campaign_id, brand_id=who.brand_id)
            session.add(campaign)
        elif campaign.brand_id != who.brand_id:
            raise _taken("campaign")
        campaign.name, campaign.funded_by = body.name, body.funded_by
        campaign.updated_at = utcnow()
        session.flush()
        return {"data": _campaign_view(campaign)}


@router.get("/campaigns/{campaign_id}", response_model=None, responses=docs.CAMPAIGN)
def get_campaign(campaign_id: uuid.UUID, request: Request, who: CurrentBrand) -> dict[str, Any]:
    with transaction(request) as session:
        campaign = session.get(Campaign, campaign_id)
        if campaign is None or campaign.brand_id != who.brand_id:
            raise ApiError(404, "not_found", f"campaign {campaign_id} not found")
        return {"data": _campaign_view(campaign)}


@router.put("/tiers", response_model=None, responses=docs.TIERS)
def put_tiers(body: list[TierIn], request: Request, who: CurrentBrand) -> dict[str, Any]:
    names = [t.name for t in body]
    if len(set(names)) != len(names) or len(body) > 50:
        raise ApiError(422, "validation_error", "tier names must be unique (at most 50 tiers)")
    tiers = [t.model_dump() for t in sorted(body, key=lambda t: t.min_points)]
    with transaction(request) as session:
        brand = session.get_one(Brand, who.brand_id, with_for_update=True)
        brand.settings = {**brand.settings, "tiers": tiers}
    return {"data": tiers}


@router.get("/tiers", response_model=None, responses=docs.TIERS)
def get_tiers(request: Request, who: CurrentBrand) -> dict[str, Any]:
    with transaction(request) as session:
        return {"data": session.get_one(Brand, who.brand_id).settings.get("tiers", [])}


@router.put("/settings", response_model=None, responses=docs.SETTINGS)
def put_settings(body: SettingsIn, request: Request, who: CurrentBrand) -> dict[str, Any]:
    with transaction(request) as session:
        brand = session.get_one(Brand, who.brand_id, with_for_update=True)
        brand.settings = {**brand.settings, **body.model_dump()}
        return {"data": _settings_view(brand)}


@router.get("/settings", response_model=None, responses=docs.SETTINGS)
def get_settings_(request: Request, who: CurrentBrand) -> dict[str, Any]:
    with transaction(request) as session:
        return {"data": _settings_view(session.get_one(Brand, who.brand_id))}


def _settings_view(brand: Brand) -> dict[str, Any]:
    return {
        "shortfall": brand.settings.get("shortfall", "negative"),
        "reversal_window_days": brand.settings.get("reversal_window_days"),
    }
