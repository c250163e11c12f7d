local M = {}

function M.split(s, sep)
  local out = {}
  for piece in string.gmatch(s, "([^" .. sep .. "]+)") do
    out[#out + 1] = piece
  end
  return out
end

local t = setmetatable({}, { __index = function(_, k) return k * 2 end })
print(t[21], #M.split("a,b,,c", ","))
--[[ long
comment ]]
return M
