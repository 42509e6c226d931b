#!/usr/bin/env bash
# The README's curl walk, as one script: ./docs/curl-walk.sh rk_...your-demo-key
# Needs curl and python3 (for reading JSON). API defaults to the one `./dev up` starts.
set -euo pipefail
KEY=${1:?usage: curl-walk.sh API_KEY}
API=${API:-http://127.0.0.1:8000/api/storefront/v1}
POINTS=00000000-0000-4000-8000-000000000001    # the demo brand's POINTS reward
CAMPAIGN=00000000-0000-4000-8000-000000000002  # the demo brand's campaign
CUSTOMER=$(python3 -c 'import uuid; print(uuid.uuid4())')
json() { python3 -c "import json,sys; d=json.load(sys.stdin); print(eval(sys.argv[1]))" "$1"; }

TOKEN=$(curl -s "$API/auth/authorize" -H "x-api-key: $KEY" | json 'd["data"]["access_token"]')
AUTH="Authorization: Bearer $TOKEN"

echo "1. an earlier purchase earns 300 + 200 points on two lines"
EARLIER=$(curl -s "$API/behavior/events" -H "$AUTH" -H 'Content-Type: application/json' -d '{
  "customer_id": "'"$CUSTOMER"'", "type": "PURCHASE",
  "accumulate": [
    {"reward_id": "'"$POINTS"'", "campaign_id": "'"$CAMPAIGN"'", "amount": 300, "expiration_date": "2030-06-30T00:00:00Z"},
    {"reward_id": "'"$POINTS"'", "campaign_id": "'"$CAMPAIGN"'", "amount": 200, "expiration_date": "2030-01-31T00:00:00Z"}]}' \
  | json 'd["data"]["id"]')
sleep 1
curl -s "$API/behavior/events/$EARLIER" -H "$AUTH" | json 'd["data"]["status"]'
echo "wallet before: $(curl -s "$API/customers/$CUSTOMER/wallet" -H "$AUTH" | json 'd["data"]["balances"][0]["balance"]')"

echo "2. a purchase earns 120 + 30 points on two lines and redeems 250 from the earlier lines"
EVENT=$(curl -s "$API/behavior/events" -H "$AUTH" -H 'Content-Type: application/json' -d '{
  "customer_id": "'"$CUSTOMER"'", "type": "PURCHASE", "data": {"order": "A-1001"},
  "accumulate": [
    {"reward_id": "'"$POINTS"'", "campaign_id": "'"$CAMPAIGN"'", "amount": 120},
    {"reward_id": "'"$POINTS"'", "campaign_id": "'"$CAMPAIGN"'", "amount": 30}],
  "redeem": [{"reward_id": "'"$POINTS"'", "amount": 250}]}' | json 'd["data"]["id"]')
sleep 1
curl -s "$API/behavior/events/$EVENT" -H "$AUTH" | json 'd["data"]["status"]'
echo "wallet after the purchase: $(curl -s "$API/customers/$CUSTOMER/wallet" -H "$AUTH" | json 'd["data"]["balances"][0]["balance"]')"

echo "3. reverse it"
curl -s -w '\nHTTP %{http_code}\n' -X POST "$API/behavior/events/$EVENT/reverse" -H "$AUTH" \
  -H 'Content-Type: application/json' -d '{"reason": "order refunded"}'
sleep 1
curl -s "$API/behavior/events/$EVENT" -H "$AUTH" | json '(d["data"]["status"], d["data"]["reversed_at"], [(t["type"], t["amount"]) for t in d["data"]["result"]["transactions"]])'
echo "wallet after the reversal: $(curl -s "$API/customers/$CUSTOMER/wallet" -H "$AUTH" | json 'd["data"]["balances"][0]["balance"]')"
