-- wrk script for B7: GET /procman/api/processes/<id>, cycling over B7_COUNT ids named b7-<n>.
local count = tonumber(os.getenv("B7_COUNT") or "50")
local path = os.getenv("B7_PATH") or "/procman/api/processes/b7-"
local n = 0
request = function()
  n = n + 1
  return wrk.format("GET", path .. (n % count))
end
