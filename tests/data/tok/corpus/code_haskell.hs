module Main where

import qualified Data.Map.Strict as M
import Data.List (foldl')

data Shape = Circle Double | Rect Double Double deriving (Show, Eq)

area :: Shape -> Double
area (Circle r) = pi * r ^ (2 :: Int)
area (Rect w h) = w * h

wordFreq :: String -> M.Map String Int
wordFreq = foldl' (\m w -> M.insertWith (+) w 1 m) M.empty . words

main :: IO ()
main = do
  mapM_ (print . area) [Circle 1.0, Rect 2 3]
  print $ M.toList (wordFreq "a b a c b a")
  let xs = [x * y | x <- [1..3], y <- [x..3], odd (x + y)]
  print xs >> return ()
